"""Inputs and a tiny model with random weights, shared by the demo tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from moee.demo.app import serve
from moee.demo.engine import DemoModel, Limits
from moee.inference.pipeline import MoEEPipeline
from tests.inference.test_inference_cli import speech, write_inputs, write_wav

MAX_SECONDS = 2.0


# Package-scoped: the demo's model thread and server end with the demo's tests, before the
# tests after them run (a live thread that ran torch halves their OpenMP speed; DemoModel).
@pytest.fixture(scope="package")
def demo_files(tmp_path_factory) -> Path:
    """Random tiny weights and every input file, good and bad."""
    root = write_inputs(tmp_path_factory.mktemp("demo_inputs"))
    (root / "not_an_image.png").write_bytes(b"\x89PNG but not really")
    write_wav(root / "long.wav", speech(MAX_SECONDS + 0.5, 16000), 16000)
    write_wav(root / "silent.wav", np.zeros(8000), 16000)
    (root / "broken.wav").write_bytes(b"RIFF not really a wav file")
    return root


@pytest.fixture(scope="package")
def demo_model(demo_files) -> Iterator[DemoModel]:
    """The demo's model on the random tiny weights, speech limited to ``MAX_SECONDS``."""
    with DemoModel([str(demo_files / "w.safetensors")], "tiny", "cpu",
                   Limits(max_seconds=MAX_SECONDS, max_file_size="1mb")) as model:
        assert model.pipeline is not None, model.status
        yield model


def free_port() -> int:
    """A localhost port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="package")
def server(demo_model):
    """The demo on a free localhost port, examples included. Every track the pipeline renders
    is recorded in ``.tracks``, and the most generations ever running at once in ``.peak``."""
    tracks, running = [], []
    render = MoEEPipeline.render

    def recording_render(self, inputs, seed=None):
        tracks.append(inputs.track)
        running.append(1)
        server.peak = max(server.peak, len(running))
        try:
            return render(self, inputs, seed)
        finally:
            running.pop()

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")  # sessions end soon after a tab closes
        patch.setattr(MoEEPipeline, "render", recording_render)
        server = serve(demo_model, port=free_port(), block=False, quiet=True)
        server.tracks, server.peak = tracks, 0
        yield server
        server.close()
    assert not server.root.exists()
