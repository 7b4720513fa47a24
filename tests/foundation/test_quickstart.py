"""The quickstart's bookkeeping: which emotion each of its videos asks for."""

from pathlib import Path

import pytest

from moee.quickstart import EMOTIONS, STAGES, requested_emotion


@pytest.mark.parametrize(("name", "expected"), [
    ("synth00053_happy_spoken-sad", "happy"),
    ("synth00053_happily_surprised_spoken-sad", "happily surprised"),
    ("synth00053_text_spoken-sad", "surprised"),
    ("synth00053_speech_spoken-sadly-fearful", "sadly fearful"),
])
def test_requested_emotion(name, expected):
    assert requested_emotion(Path(f"{name}.mp4")) == expected


def test_every_stage_config_exists_and_every_condition_parses():
    from moee.emotions import parse_emotion
    from moee.quickstart import CONFIGS

    assert all((CONFIGS / config).is_file() for _, config in STAGES)
    assert [parse_emotion(spec).kind for spec in EMOTIONS.values()] == [
        "basic", "compound", "text", "speech"]


def test_a_rerun_skips_finished_steps_and_keeps_their_times(tmp_path, monkeypatch):
    from moee import quickstart

    runs = tmp_path / "runs"
    weights = runs / "tiny" / "weights"
    (runs / "synthemo" / "test").mkdir(parents=True)
    (runs / "synthemo" / "test" / "manifest.json").write_text("{}")
    weights.mkdir(parents=True)
    for export, _ in STAGES:
        (weights / export).touch()
    (runs / "tiny" / "quickstart.json").write_text('{"seconds": {"vae": 105.0}}')
    for name, value in {"RUNS": runs, "SYNTHEMO": runs / "synthemo", "WEIGHTS": weights,
                        "VIDEOS": runs / "tiny" / "videos"}.items():
        monkeypatch.setattr(quickstart, name, value)
    asked = {}
    monkeypatch.setattr(quickstart, "animate_test_portraits",
                        lambda portraits, steps, strength: asked.update(strength=strength) or [])
    monkeypatch.setattr(quickstart, "score_videos", lambda videos: None)
    timings = quickstart.quickstart(strength=0.5)
    assert set(timings) == {"vae", "animate"} and timings["vae"] == 105.0
    assert asked == {"strength": 0.5}
