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


def test_weights_of_the_old_expert_recipe_are_one_line(tmp_path, monkeypatch):
    """Experts that each trained their own Emotion-to-Latents cannot be mixed: the quickstart
    stops with one line that says how to retrain, not with a traceback."""
    import torch
    from safetensors.torch import save_file

    from moee import quickstart

    weights = tmp_path / "weights"
    weights.mkdir()
    for index, (export, _) in enumerate(STAGES):
        if export.endswith(".safetensors"):
            save_file({"emotion_to_latents.null_latent": torch.full((2,), float(index))},
                      weights / export, metadata={"stage": "ExpertModule"})

    from moee.inference.animate import stage_weights
    from moee.stages.base import check_parallel_exports

    # the stages are skipped (their exports exist); loading them for the videos must fail
    monkeypatch.setattr(quickstart, "quickstart",
                        lambda **_: check_parallel_exports(stage_weights([str(weights)])))
    with pytest.raises(SystemExit) as stop:
        quickstart.main([])
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "quickstart --force" in message and "emotion_to_latents.null_latent" in message
