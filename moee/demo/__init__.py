"""``python -m moee demo``: a Gradio page for every emotion form MoEE reads.

* :mod:`moee.demo.cli` — the command (needs the ``demo`` extra: ``pip install -e ".[demo]"``);
* :mod:`moee.demo.app` — the page, the queue, the server;
* :mod:`moee.demo.engine` — the model, the limits and the session files, without gradio;
* :mod:`moee.demo.forms` — the emotion forms → the ``--emotion`` string;
* :mod:`moee.demo.examples` — example inputs made offline.
"""
