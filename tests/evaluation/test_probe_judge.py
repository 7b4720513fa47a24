"""The probe judge scores what a video is: noise, a still portrait and another person's face
are never counted as the asked emotion of the right person; a real clip is."""

import numpy as np
import pytest

from moee.data.synth.face import mouth_opening_from_landmarks
from moee.data.synth.generator import ClipConfig, make_clip
from moee.emotions import ACTION_UNITS
from moee.evaluation.probe_judge import ProbeJudge, lip_sync_correlation
from moee.evaluation.probe_training import train_probes
from moee.evaluation.probes import load_probes
from moee.showcase import read_as

PEOPLE = range(100, 104)


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """Probes trained briefly on their own identities (none of PEOPLE)."""
    cache = tmp_path_factory.mktemp("probes")
    train_probes(train_identities=60, frames_per_identity=16, heldout_identities=6,
                 expression_steps=800, identity_steps=120, batch=48, cache_dir=cache, threads=2,
                 log=lambda _: None)
    return load_probes(cache_dir=cache)


@pytest.fixture(scope="module")
def clips():
    config = ClipConfig(size=64, num_frames=40)
    return {(p, e): make_clip(config, p, i, split="test", emotion=e) for p in PEOPLE
            for i, e in enumerate(("neutral", "happy"))}


def test_noise_still_portraits_and_other_people_score_as_what_they_are(probes, clips):
    def portrait(clip):  # as the quickstart picks it: the neutral frame with the mouth shut
        return clip.frames[mouth_opening_from_landmarks(clip.landmarks).argmin()]

    portraits = {f"p{p}": portrait(clips[p, "neutral"]) for p in PEOPLE}
    judge = ProbeJudge(probes, portraits)
    own = f"p{PEOPLE[0]}"
    happy = clips[PEOPLE[0], "happy"]
    real = judge.read(happy.frames[24:40], own)
    assert judge.reads_as(real, "happy", own), real
    smile = ACTION_UNITS.index("AU12")  # the AUs it reads: a smile's lip corners rise
    assert real.action_units.shape == (len(ACTION_UNITS),)
    assert real.action_units[smile] > judge.read(
        clips[PEOPLE[0], "neutral"].frames[24:40], own).action_units[smile] + 0.3

    noise = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    reading = judge.read(noise, own)
    assert not reading.is_face and reading.emotion is None
    assert not any(judge.reads_as(reading, e, own) for e in ("happy", "neutral", "sad"))

    still = judge.read(np.repeat(portraits[own][None], 16, 0), own)
    assert still.is_face and still.identity == own
    assert not any(judge.reads_as(still, e, own) for e in ("surprised", "angry"))
    truth = mouth_opening_from_landmarks(happy.landmarks[24:40])
    assert lip_sync_correlation([still.mouth], [truth]) == pytest.approx(0.0, abs=1e-6)

    other = judge.read(clips[PEOPLE[1], "happy"].frames[24:40], own)
    assert other.is_face and other.identity == f"p{PEOPLE[1]}"
    assert not judge.reads_as(other, "happy", own)
    # what the quickstart's report says each of them read as
    assert read_as(judge, real, "happy", own) == "happy"
    assert read_as(judge, reading, "happy", own) == "not a face"
    assert read_as(judge, other, "happy", own) == "another person"
    assert read_as(judge, still, "happy", own) == still.emotion != "happy"


def test_lip_sync_correlation_centres_each_video():
    track = np.sin(np.linspace(0, 6, 20))
    assert lip_sync_correlation([track + 5, track], [track, track + 1]) == pytest.approx(1.0)
    assert lip_sync_correlation([-track], [track]) == pytest.approx(-1.0)
    assert lip_sync_correlation([np.ones(20)], [track]) == 0.0
