"""The quickstart's bookkeeping: which emotion each of its videos asks for."""

import json
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


@pytest.fixture
def trained_runs(tmp_path, monkeypatch):
    """A runs/ folder whose SynthEmo and stage exports exist (empty files), wired into the
    quickstart module; returns the weights folder."""
    from moee import quickstart

    runs = tmp_path / "runs"
    weights = runs / "tiny" / "weights"
    (runs / "synthemo" / "test").mkdir(parents=True)
    (runs / "synthemo" / "test" / "manifest.json").write_text("{}")
    weights.mkdir(parents=True)
    for export, _ in STAGES:
        (weights / export).touch()
    for name, value in {"RUNS": runs, "SYNTHEMO": runs / "synthemo", "WEIGHTS": weights,
                        "VIDEOS": runs / "tiny" / "videos"}.items():
        monkeypatch.setattr(quickstart, name, value)
    return weights


def test_a_rerun_skips_finished_steps_and_keeps_their_times(trained_runs, monkeypatch):
    from moee import quickstart

    record = trained_runs.parent / "quickstart.json"
    record.write_text('{"seconds": {"vae": 105.0}}')
    asked = {}
    monkeypatch.setattr(quickstart, "animate_test_portraits",
                        lambda portraits, steps, strength: asked.update(strength=strength) or [])
    monkeypatch.setattr(quickstart, "score_videos", lambda videos: None)
    timings = quickstart.quickstart(strength=0.5)
    assert set(timings) == {"vae", "animate"} and timings["vae"] == 105.0
    assert asked == {"strength": 0.5}
    assert json.loads(record.read_text())["seconds"] == timings
    assert not list(record.parent.glob(".*partial"))


def test_weights_of_the_old_expert_recipe_are_one_line(trained_runs):
    """Experts that each trained their own Emotion-to-Latents cannot be mixed: the quickstart,
    which skips the stages whose exports exist, stops at loading them with one line that says
    how to retrain, not with a traceback."""
    import torch
    from safetensors.torch import save_file

    from moee import quickstart

    for index, (export, _) in enumerate(STAGES):
        if export.startswith("expert_"):
            save_file({"emotion_to_latents.null_latent": torch.full((2,), float(index))},
                      trained_runs / export, metadata={"stage": "ExpertModule"})
        elif export.endswith(".safetensors"):
            save_file({"x": torch.zeros(1)}, trained_runs / export)
    with pytest.raises(SystemExit) as stop:
        quickstart.main([])
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "quickstart --force" in message and "emotion_to_latents.null_latent" in message
