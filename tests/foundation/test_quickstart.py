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
