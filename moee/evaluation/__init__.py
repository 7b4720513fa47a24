"""Evaluation: generate clips with trained models and score them with the metrics.

- :mod:`~moee.evaluation.lightning`: ``python -m moee test`` (``EvaluationModule``, ``ModelEntry``)
- :mod:`~moee.evaluation.generation`: test clips animated under their own conditions
- :mod:`~moee.evaluation.suites`: ``MetricSuite`` and the standard (real-data) metric networks
- :mod:`~moee.evaluation.synthemo`: the suite measured by the SynthEmo probes
- :mod:`~moee.evaluation.callbacks`: scores and sample videos during training
- :mod:`~moee.evaluation.probes`: the SynthEmo probe networks and their cache;
  :mod:`~moee.evaluation.probe_training`: their training (``python -m moee synth probes``);
  :mod:`~moee.evaluation.probe_judge`: what they read in whole videos
"""
