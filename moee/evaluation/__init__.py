"""Evaluation: generate clips with trained models and score them with the metrics.

- :mod:`~moee.evaluation.probes`: the SynthEmo probe networks, the metrics' stand-in nets
  (``load_probes``); :mod:`~moee.evaluation.probe_training`: their training
  (``python -m moee synth probes``)
"""
