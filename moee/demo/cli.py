"""``python -m moee demo``: start the web demo.

Example::

    python -m moee demo --weights runs/tiny/weights --net-preset tiny --port 7860

It binds to 127.0.0.1 unless ``--host`` says otherwise; without weights the page still opens
and says which command makes them.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket
import sys

from jsonargparse import ArgumentParser

from moee.demo.engine import DEFAULT_WEIGHTS, DemoModel, Limits
from moee.inference.animate import underscored
from moee.models.pretrained import Preset


def demo(
    weights: list[str],
    net_preset: Preset = "tiny",
    host: str = "127.0.0.1",
    port: int = 7860,
    max_seconds: float = 20.0,
    max_file_size: str = "20mb",
    device: str = "auto",
    examples: bool = True,
) -> None:
    """Serve the MoEE demo page until interrupted.

    Args:
        weights: trained weights in loading order, or their folder.
        net_preset: network size: tiny (CPU) or sd15.
        host: address to bind; 0.0.0.0 serves every network the machine is on.
        port: port to listen on.
        max_seconds: the longest speech a request may animate.
        max_file_size: the largest upload, e.g. 20mb.
        device: cpu, cuda, cuda:1, ... or auto.
        examples: show the example inputs (SynthEmo, the astronaut), made at start.
    """
    from moee.demo.app import serve

    check_port(host, port)
    with DemoModel(weights, net_preset, device,
                   Limits(max_seconds=max_seconds, max_file_size=max_file_size)) as model:
        if model.pipeline is None:
            logging.getLogger(__name__).warning("%s", model.status)
        signal.signal(signal.SIGTERM, _interrupt)  # a plain kill also removes the temp files
        serve(model, host, port, examples=examples)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def check_port(host: str, port: int) -> None:
    """Exit with one line when ``host:port`` cannot be served (taken, or not this machine's)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError as error:
            sys.exit(f"error: cannot serve on {host}:{port}: {error.strerror or error}; "
                     "pass another --port or --host")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m moee demo`` (options: ``--help``)."""
    parser = ArgumentParser(prog="python -m moee demo", default_env=False,
                            description="Serve the MoEE web demo (Gradio).")
    parser.add_function_arguments(demo, skip={"weights"})
    parser.add_argument("--weights", nargs="+", default=[DEFAULT_WEIGHTS],
                        help="trained weights in loading order, or their folder")
    args = parser.parse_args(underscored(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up requests
    if importlib.util.find_spec("gradio") is None:
        sys.exit("error: the demo needs gradio: pip install -e \".[demo]\"")
    demo(**args.as_dict())
