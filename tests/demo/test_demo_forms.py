"""The demo's emotion forms write strings that ``moee animate --emotion`` reads as meant."""

import pytest

from moee.demo import forms
from moee.emotions import ACTION_UNITS, BASIC_EMOTIONS, EmotionSpecError, parse_emotion_timeline


def only(spec: str):
    """The single condition of a spec."""
    entries = parse_emotion_timeline(spec)
    assert len(entries) == 1
    return entries[0][1]


def test_every_label_at_any_intensity_reads_back():
    assert forms.LABELS[0] == "neutral" and len(forms.LABELS) == 11
    for name in forms.LABELS:
        for intensity in (1.0, 0.4):
            spec = forms.label_condition(name, intensity)
            condition = only(spec)
            assert condition.name == name
            if name != "neutral":
                assert condition.intensity == pytest.approx(intensity)
    assert forms.label_condition("sad", 0.4) == "sad@0.4"
    assert forms.label_condition("neutral", 0.4) == "neutral"


def test_mix_sliders_write_weights():
    weights = [0.0] * 6
    weights[BASIC_EMOTIONS.index("happy")] = 0.7000000001  # as a browser slider sends it
    weights[BASIC_EMOTIONS.index("surprised")] = 0.3
    spec = forms.mix_condition(weights)
    assert spec == "happy:0.7,surprised:0.3"
    condition = only(spec)
    assert condition.kind == "mixture" and condition.weights == pytest.approx(
        (0, 0, 0, 0.7, 0, 0.3))
    assert forms.mix_condition([0] * 6) == "neutral"
    assert only(forms.mix_condition([0, 0, 0, 0, 0.5, 0])).name == "sad"


def test_action_units_text_speech_and_timeline():
    values = [0.0] * len(ACTION_UNITS)
    values[ACTION_UNITS.index("AU6")], values[ACTION_UNITS.index("AU12")] = 0.8, 1.0
    assert forms.action_unit_condition(values) == "AU6:0.8,AU12:1"
    assert only("AU6:0.8,AU12:1").aus == tuple(values)
    assert forms.action_unit_condition([0] * len(ACTION_UNITS)) == "neutral"
    assert forms.text_condition("  a faint,\n nervous smile ") == "text:a faint, nervous smile"
    assert only(forms.text_condition("a shy smile")).text == "a shy smile"
    rows = [[0, "neutral"], [1.5, "happy:0.5,sad:0.5"], [None, ""], [3, "sadly surprised"]]
    spec = forms.timeline_condition(rows)
    assert spec == "0s:neutral,1.5s:happy:0.5,sad:0.5,3s:sadly surprised"
    assert [t for t, _ in parse_emotion_timeline(spec)] == [0, 1.5, 3]
    with pytest.raises(EmotionSpecError, match="row 2 must be a number"):
        forms.timeline_condition([[0, "sad"], ["soon", "happy"]])


@pytest.mark.parametrize(("spec", "start"), [
    ("happy", "✓ happy at intensity 1: its expert alone"),
    ("happy:0.7,surprised:0.3", "✓ a mix"),
    ("sadly surprised@0.5", "✓ the compound sadly surprised: the surprised expert at 0.6 and "
                            "the sad expert at 0.4"),
    ("text:a smile", "✓ a text description"),
    ("speech", "✓ the speech's own tone"),
    ("0s:neutral,2s:happy", "✓ a timeline of 2 entries"),
    ("ecstatic", "✗ unknown emotion 'ecstatic'; valid: neutral, angry"),
    ("text:", "✗ 'text:' needs a description"),
])
def test_check_line(spec, start):
    line = forms.check_condition(spec)
    assert line.startswith(start) and "\n" not in line
