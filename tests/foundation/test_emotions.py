"""parse_emotion and the vocabulary: every form a user writes, and every error."""

import numpy as np
import pytest

from moee.emotions import (
    ACTION_UNITS,
    BASIC_EMOTIONS,
    COMPOUND_EMOTIONS,
    COMPOUND_WEIGHT,
    EMOTION_AU_PROTOTYPES,
    EMOTION_CLASSES,
    UPPER_FACE_UNITS,
    EmotionSpecError,
    classifier_emotion_weights,
    parse_emotion,
    parse_emotion_timeline,
)


def test_vocabulary_contract():
    assert BASIC_EMOTIONS == ("angry", "disgusted", "fear", "happy", "sad", "surprised")
    assert set(COMPOUND_EMOTIONS) == {
        "angrily disgusted", "sadly surprised", "sadly fearful", "happily surprised"
    }
    assert len(EMOTION_CLASSES) == 11
    for name, prototype in EMOTION_AU_PROTOTYPES.items():
        assert name in EMOTION_CLASSES
        assert set(prototype) <= set(ACTION_UNITS)
        assert all(0 < v <= 1 for v in prototype.values())
    for weights in COMPOUND_EMOTIONS.values():
        assert sum(weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("emotion", BASIC_EMOTIONS)
def test_basic_label_selects_its_expert(emotion):
    condition = parse_emotion(emotion)
    assert condition.kind == "basic"
    assert condition.expert == BASIC_EMOTIONS.index(emotion)
    assert condition.weights[condition.expert] == 1.0 and sum(condition.weights) == 1.0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("happily surprised", {"surprised": 0.6, "happy": 0.4}),
        ("Sadly_Fearful", {"fear": 0.6, "sad": 0.4}),
        ("angrily-disgusted", {"disgusted": 0.6, "angry": 0.4}),
        ("sadly surprised", {"surprised": 0.6, "sad": 0.4}),
        ("happily sad", {"sad": 0.6, "happy": 0.4}),
    ],
)
def test_compound(spec, expected):
    condition = parse_emotion(spec)
    assert condition.kind == "compound" and condition.expert is None
    for emotion, weight in expected.items():
        assert condition.weights[BASIC_EMOTIONS.index(emotion)] == pytest.approx(weight)
    assert sum(condition.weights) == pytest.approx(1.0)


def _region_error(name: str, weights: tuple[float, float], upper: bool) -> float:
    """Squared error of a weighted sum of a compound's parts' AU prototypes against its own, in
    one face region."""
    parts = [part.name for part in parse_emotion(name).compound_parts()]
    units = [au for au in ACTION_UNITS if (au in UPPER_FACE_UNITS) == upper]
    return sum((sum(w * EMOTION_AU_PROTOTYPES[p].get(au, 0) for w, p in zip(weights, parts))
                - EMOTION_AU_PROTOTYPES[name].get(au, 0)) ** 2 for au in units)


@pytest.mark.parametrize("name", COMPOUND_EMOTIONS)
def test_compound_region_weights_rebuild_its_action_units_best(name):
    """Per region, no other non-negative weights of the two parts come closer to the compound's
    AU prototype (checked on a grid)."""
    weights = parse_emotion(name).region_weights()
    grid = [(a / 10, b / 10) for a in range(16) for b in range(16)]
    for region, upper in zip(weights, (True, False)):
        assert min(region) >= 0
        best = min(_region_error(name, w, upper) for w in grid)
        assert _region_error(name, region, upper) <= best + 1e-9


def test_sadly_surprised_takes_sad_brows_and_surprised_mouth():
    (upper_surprised, upper_sad), (lower_surprised, lower_sad) = \
        parse_emotion("sadly surprised@0.5").region_weights()  # intensity changes nothing
    assert upper_surprised == lower_sad == 0  # surprise's raised outer brows would be wrong
    assert upper_sad == pytest.approx(1.047, abs=1e-3)  # AU1 1.0, AU4 0.8 from AU1 1.0, AU4 0.7
    assert lower_surprised == pytest.approx(0.866, abs=1e-3)
    happily = parse_emotion("happily surprised").region_weights()  # main part: surprised
    assert happily[0][1] == 0 and min(happily[1]) > 0  # no cheek raise; a smiling open mouth
    assert parse_emotion("happily sad").region_weights() is None  # no prototype of its own
    with pytest.raises(ValueError, match="not a compound"):
        parse_emotion("happy:0.5,sad:0.5").region_weights()


def test_weighted_mix_is_normalised():
    condition = parse_emotion("happy:7, surprised:3")
    assert condition.kind == "mixture"
    assert condition.weights == pytest.approx((0, 0, 0, 0.7, 0, 0.3))
    assert parse_emotion("happy:0.7,surprised:0.3").weights == pytest.approx(condition.weights)


def test_mix_with_neutral_lowers_intensity_and_expands_compounds():
    half = parse_emotion("neutral:0.5,happy:0.5")
    assert half.kind == "basic" and half.intensity == pytest.approx(0.5)
    mixed = parse_emotion("happily surprised:0.5,sad:0.5")
    assert mixed.weights == pytest.approx((0, 0, 0, 0.2, 0.5, 0.3))


def test_intensity():
    condition = parse_emotion("sad@0.5")
    assert condition.intensity == 0.5 and condition.expert == 4
    assert condition.label_vector() == pytest.approx([0, 0, 0, 0, 0.5, 0])
    full = parse_emotion("sad").au_vector()
    assert condition.au_vector() == pytest.approx([v * 0.5 for v in full])
    assert parse_emotion("happy:0.7,surprised:0.3@0.2").intensity == pytest.approx(0.2)


def test_action_units():
    condition = parse_emotion("AU6:0.8,au12:1.0, AU045:0.5")
    assert condition.kind == "au" and condition.expert is None
    vector = dict(zip(ACTION_UNITS, condition.au_vector()))
    assert vector["AU6"] == 0.8 and vector["AU12"] == 1.0 and vector["AU45"] == 0.5
    assert sum(vector.values()) == pytest.approx(2.3)


def test_label_au_vector_is_the_prototype():
    vector = dict(zip(ACTION_UNITS, parse_emotion("happily surprised").au_vector()))
    assert vector["AU12"] == EMOTION_AU_PROTOTYPES["happily surprised"]["AU12"]
    assert vector["AU15"] == 0


def test_text_speech_neutral():
    assert parse_emotion("text: a faint, sad smile").text == "a faint, sad smile"
    assert parse_emotion("speech").kind == "speech"
    neutral = parse_emotion("Neutral")
    assert neutral.kind == "neutral" and neutral.label_vector() == [0.0] * 6


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("contempt", "valid: neutral, angry"),
        ("happy:-0.2,sad:1", "must be ≥ 0"),
        ("happy:0,sad:0", "all zero"),
        ("happy:0.5,happy:0.5", "twice"),
        ("happy:x", "must be a number"),
        ("happy,sad", "name:weight"),
        ("AU99:1", "valid: AU1, AU2"),
        ("AU12:1.5", "must be in [0, 1]"),
        ("sad@1.2", "must be in [0, 1]"),
        ("sad@", "must be a number"),
        ("", "empty emotion"),
        ("text:", "needs a description"),
        ("sadly sad", "unknown emotion"),
    ],
)
def test_errors_say_what_is_valid(spec, message):
    with pytest.raises(EmotionSpecError, match=message.replace("[", r"\[")) as error:
        parse_emotion(spec)
    assert "\n" not in str(error.value)


def test_timeline():
    timeline = parse_emotion_timeline("0s:neutral,3s:happy:0.5,sad:0.5,6.5s:sadly surprised")
    assert [t for t, _ in timeline] == [0.0, 3.0, 6.5]
    assert [c.kind for _, c in timeline] == ["neutral", "mixture", "compound"]
    assert parse_emotion_timeline("2s:sad")[0] == (0.0, parse_emotion("neutral"))
    assert parse_emotion_timeline("happy")[0][1].expert == 3
    with pytest.raises(EmotionSpecError, match="increase"):
        parse_emotion_timeline("0s:sad,3s:happy,2s:fear")


def test_classifier_classes_map_onto_basic_emotions():
    """An emotion classifier's class names (SUPERB's abbreviations, aliases, compounds) become
    basic-emotion weights; a class naming no emotion of MoEE's weighs nothing and is reported."""
    weights, unknown = classifier_emotion_weights(
        ["neu", "hap", "Anger", "sad", "fru", "happily surprised"])
    happy, angry, sad, surprised = (BASIC_EMOTIONS.index(e)
                                    for e in ("happy", "angry", "sad", "surprised"))
    expected = np.zeros((6, 6), dtype=np.float32)
    expected[1, happy] = expected[2, angry] = expected[3, sad] = 1.0
    expected[5, surprised], expected[5, happy] = COMPOUND_WEIGHT, 1 - COMPOUND_WEIGHT
    np.testing.assert_allclose(weights, expected)
    assert unknown == ["fru"]
