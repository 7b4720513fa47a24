"""The demo's model side: one line for every bad input, the pipeline's own progress, missing
weights, the one thread that runs the network, and the session files."""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from moee.demo.engine import DemoModel, Request, SessionFiles, missing_weights
from moee.errors import MoEEError
from moee.inference.sampling import SamplerSettings

FAST = SamplerSettings(steps=2, clip_frames=4, audio_guidance=1, emotion_guidance=1)


def request(files, image="astronaut.jpg", audio="speech.wav", emotion="happy", **options):
    return Request(str(files / image) if image else None, str(files / audio) if audio else None,
                   emotion, FAST, **options)


@pytest.mark.parametrize(("override", "message"), [
    ({"image": "grey.png"}, "no face found in the image; give a portrait"),
    ({"image": "two.png"}, "2 faces found in the image"),
    ({"image": None}, "no portrait: upload one"),
    ({"audio": None}, "no speech: upload an audio file"),
    ({"audio": "silent.wav"}, "the speech is silent"),
    ({"audio": "broken.wav"}, "cannot read the speech: not an audio file"),
    ({"audio": "long.wav"}, "the speech is 2.5 s long; this demo animates at most 2 s"),
    ({"emotion": "ecstatic"}, "unknown emotion 'ecstatic'; valid: neutral"),
    ({"emotion": "0s:happy,soon:sad"}, "needs the form 'name:weight'"),
], ids=["no-face", "two-faces", "no-image", "no-audio", "silent", "unreadable-audio",
        "too-long", "bad-emotion", "bad-timeline"])
def test_bad_input_is_one_line_and_writes_nothing(demo_model, demo_files, tmp_path, override,
                                                  message):
    with pytest.raises(MoEEError) as error:
        demo_model.generate(request(demo_files, **override), tmp_path / "out")
    assert message in str(error.value) and "\n" not in str(error.value), error.value
    assert str(demo_files) not in str(error.value)  # no server paths on the page
    assert not (tmp_path / "out").exists()


def test_generation_reports_every_step_and_writes_video_and_strip(demo_model, demo_files,
                                                                  tmp_path):
    seen = []
    result = demo_model.generate(request(demo_files, paste_back=True), tmp_path, seen.append)
    assert result.frames == 13  # ceil(0.5 s × 25 fps), in 4 clips of 4 frames
    assert [(p.clip, p.step) for p in seen] == [(c, s) for c in (1, 2, 3, 4) for s in (1, 2)]
    assert {p.clips for p in seen} == {4} and seen[-1].fraction == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([result.video.name,
                                                                 result.strip.name])
    assert result.strip.stat().st_size > 0 and 0 < result.first_clip_seconds <= result.seconds
    assert "13 frames (0.52 s) for `happy`" in result.summary()


def test_every_generation_runs_on_the_model_s_own_thread_in_the_caller_s_context(
        demo_files, tmp_path, monkeypatch):
    """Loading and every generation run on one thread, whichever thread asks (OpenMP keeps a
    team of workers per thread that ran torch: rotating server threads would multiply them),
    with the caller's context variables (gradio's progress bar); close ends that thread."""
    from moee.demo import engine

    ran_on, seen_context = [], []
    load, generate = engine.load_pipeline, DemoModel._generate
    caller = contextvars.ContextVar("caller")

    def recording_load(*args, **kwargs):
        ran_on.append(threading.current_thread())
        return load(*args, **kwargs)

    def recording_generate(self, *args):
        ran_on.append(threading.current_thread())
        seen_context.append(caller.get(None))
        return generate(self, *args)

    monkeypatch.setattr(engine, "load_pipeline", recording_load)
    monkeypatch.setattr(DemoModel, "_generate", recording_generate)
    with DemoModel([str(demo_files / "w.safetensors")], "tiny", "cpu") as model:
        def ask(name: str):
            caller.set(name)
            return model.generate(request(demo_files), tmp_path / name)

        with ThreadPoolExecutor(2) as servers:  # two server threads, one after the other
            for name in ("first", "second"):
                assert servers.submit(ask, name).result().frames == 13
        with pytest.raises(MoEEError, match="unknown emotion"):  # errors cross the thread
            model.generate(request(demo_files, emotion="ecstatic"), tmp_path / "bad")
    assert len(ran_on) == 4 and len(set(ran_on)) == 1 and ran_on[0].name.startswith("moee-")
    assert ran_on[0] is not threading.current_thread() and not ran_on[0].is_alive()
    assert seen_context == ["first", "second", None]


def test_missing_weights_name_the_command_that_makes_them(tmp_path):
    line = missing_weights([str(tmp_path)], "tiny")
    assert line == (f"no trained weights at {tmp_path}/backbone.safetensors: make them with "
                    "`python -m moee quickstart`, or pass --weights")
    assert "python -m moee fit --config configs/backbone.yaml" in missing_weights([], "sd15")
    with DemoModel([str(tmp_path)]) as model:
        assert model.pipeline is None and model.describe() == line
        with pytest.raises(MoEEError, match="make them with `python -m moee quickstart`"):
            model.generate(Request("a.png", "b.wav", "happy"), tmp_path / "out")


def test_session_files_go_with_their_session(tmp_path):
    files = SessionFiles(tmp_path)
    shared, own, example = (tmp_path / name / "f.png" for name in ("aa", "bb", "cc"))
    outside = tmp_path.parent / "outside.png"
    for path in (shared, own, example, outside):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    files.protect([example])
    files.use("one", str(shared), str(own), str(example), str(outside), None)
    files.use("two", str(shared))
    (files.folder("one") / "video.mp4").write_bytes(b"x")
    files.close("one")
    assert not files.folder("one", create=False).exists()
    assert not own.parent.exists() and shared.exists() and example.exists() and outside.exists()
    files.close("two")
    assert not shared.exists()
    assert files.folder("../../etc").parent == tmp_path / "sessions"
