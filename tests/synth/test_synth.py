"""SynthEmo: determinism, label/pixel consistency, audio-viseme alignment, shards, probes."""

import shutil

import numpy as np
import pytest

from moee.data.shards import decode_clip, iter_raw_samples, read_manifest, shard_urls
from moee.data.synth.audio import espeak_speech, synthesize_speech
from moee.data.synth.face import FaceRenderer
from moee.data.synth.generator import ClipConfig, generate_dataset, make_clip
from moee.data.synth.identity import sample_identity
from moee.data.synth.text import describe_aus
from moee.emotions import ACTION_UNITS, EMOTION_CLASSES, parse_emotion

SMALL = ClipConfig(seed=3, size=64, num_frames=12)


def _aus(**values: float) -> np.ndarray:
    aus = np.zeros(len(ACTION_UNITS), np.float32)
    for name, value in values.items():
        aus[ACTION_UNITS.index(name)] = value
    return aus


def _box(landmarks: np.ndarray, index, size: int, pad: int = 2) -> tuple[slice, slice]:
    pts = landmarks[list(index)] * size
    x0, y0 = np.floor(pts.min(0)).astype(int) - pad
    x1, y1 = np.ceil(pts.max(0)).astype(int) + pad
    return slice(max(y0, 0), y1), slice(max(x0, 0), x1)


def _changed(a: np.ndarray, b: np.ndarray, box: tuple[slice, slice]) -> float:
    return float(np.abs(a[box].astype(int) - b[box].astype(int)).sum())


def test_same_seed_same_clip_bytes():
    a, b = make_clip(SMALL, 2, 5), make_clip(SMALL, 2, 5)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.audio.tobytes() == b.audio.tobytes()
    assert a.meta == b.meta
    other = make_clip(ClipConfig(seed=4, size=64, num_frames=12), 2, 5)
    assert other.frames.tobytes() != a.frames.tobytes()


def test_clip_labels_are_consistent():
    clip = make_clip(SMALL, 1, 3)
    assert clip.meta.emotion in EMOTION_CLASSES
    assert clip.aus.shape == (12, 17) and 0 <= clip.aus.min() and clip.aus.max() <= 1
    assert clip.landmarks.shape == (12, 68, 2)
    assert 0 < clip.landmarks.min() < clip.landmarks.max() < 1
    assert clip.extras["mnsref.npy"].shape == (2, 64, 64, 3)
    assert clip.extras["mnslmk.npy"].shape == (2, 68, 2)
    refs = clip.meta.extra["mns_emotions"]
    assert len(refs) == 2 and clip.meta.emotion not in refs
    assert clip.meta.text and clip.meta.source == "synthemo"


@pytest.mark.parametrize("head_motion", [0.0, 1.0])
def test_mns_references_are_the_person_neutral_then_another_emotion_at_the_clip_pose(head_motion):
    config = ClipConfig(seed=3, size=64, num_frames=12, head_motion=head_motion)
    clip = make_clip(config, 1, 0, emotion="happy")
    assert clip.meta.extra["mns_emotions"][0] == "neutral"
    assert clip.meta.extra["mns_emotions"][1] not in ("neutral", "happy")
    # the nose bridge moves with the head only: references sit where the clip's head is on average
    bridge = clip.extras["mnslmk.npy"][:, 27:31].astype(np.float32)
    mean_bridge = np.broadcast_to(clip.landmarks[:, 27:31].mean(0), bridge.shape)
    np.testing.assert_allclose(bridge, mean_bridge, atol=0.004 if head_motion == 0 else 0.02)
    sway = np.ptp(clip.landmarks[:, 27:31], axis=0).max()
    assert (sway < 1e-3) if head_motion == 0 else (sway > 0.01)
    assert make_clip(config, 1, 0, emotion="neutral").meta.extra["mns_emotions"][0] != "neutral"


@pytest.mark.parametrize(("args", "message"), [
    (["--size", "8"], "size must be in 32..512 px, got 8"),
    (["--frames", "0"], "frames must be at least 1, got 0"),
    (["--head_motion", "-0.5"], "head_motion must be 0 (a still head) or more, got -0.5"),
])
def test_bad_synth_settings_are_one_line_and_write_nothing(tmp_path, args, message):
    from moee.data.synth.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "synthemo"), *args])
    assert stop.value.code == f"error: {message}"
    assert not (tmp_path / "synthemo").exists()


def test_landmarks_sit_on_drawn_features():
    face = FaceRenderer(sample_identity(0, 5), 128)
    frame, lmk = face.render(np.zeros(17))
    skin = np.array(face.identity.skin)
    px = lambda p: frame[int(round(p[1] * 128)), int(round(p[0] * 128))].astype(float)  # noqa: E731
    lips = np.array(face.identity.lips)
    for outer, inner in ((57, 66), (56, 65), (58, 67)):
        colour = px((lmk[outer] + lmk[inner]) / 2)
        assert np.abs(colour - lips).sum() < 30 < np.abs(colour - skin).sum()
    for brow in range(18, 26):
        if brow != 21:
            assert np.abs(px(lmk[brow]) - skin).sum() > 40
    pupil = lmk[[37, 38, 40, 41]].mean(0)
    assert np.abs(px(pupil) - skin).sum() > 60


@pytest.mark.parametrize("au, moves, still", [
    ("AU12", range(48, 68), range(17, 27)),
    ("AU15", range(48, 68), range(17, 27)),
    ("AU1", range(17, 27), range(48, 68)),
    ("AU2", range(17, 27), range(48, 68)),
    ("AU4", range(17, 27), range(48, 68)),
])
def test_action_units_change_their_region_only(au, moves, still):
    face = FaceRenderer(sample_identity(0, 2), 96)
    rest, lmk = face.render(np.zeros(17))
    active, lmk_active = face.render(_aus(**{au: 1.0}))
    assert _changed(rest, active, _box(lmk, moves, 96)) > 300
    assert _changed(rest, active, _box(lmk, still, 96, pad=1)) == 0
    assert np.abs(lmk_active[list(moves)] - lmk[list(moves)]).max() > 0.01
    assert np.abs(lmk_active[list(still)] - lmk[list(still)]).max() == 0


def test_blink_closes_the_eyes():
    face = FaceRenderer(sample_identity(0, 9), 64)
    _, open_eyes = face.render(np.zeros(17))
    _, closed = face.render(_aus(AU45=1.0))
    gap = lambda lmk: lmk[[41, 40], 1].mean() - lmk[[37, 38], 1].mean()  # noqa: E731
    assert gap(open_eyes) > 0.02 and abs(gap(closed)) < 0.003


@pytest.mark.parametrize("size", [32, 64, 128, 512])
def test_any_size(size):
    frame, lmk = FaceRenderer(sample_identity(0, 1), size).render(np.zeros(17))
    assert frame.shape == (size, size, 3) and frame.dtype == np.uint8
    assert lmk.shape == (68, 2)


def test_identities_look_different():
    frames = [FaceRenderer(sample_identity(0, i), 32).render(np.zeros(17))[0].astype(float)
              for i in range(20)]
    diffs = [np.abs(a - b).mean() for i, a in enumerate(frames) for b in frames[i + 1:]]
    assert min(diffs) > 5


def test_audio_energy_follows_the_jaw_at_lag_zero():
    speech = synthesize_speech(150, "happy", np.random.default_rng(0))
    rms = np.sqrt((speech.audio.reshape(150, -1) ** 2).mean(1))
    jaw = speech.visemes[:, 0]

    def corr(lag: int) -> float:
        a, b = (rms[lag:], jaw[:len(jaw) - lag]) if lag >= 0 else (rms[:lag], jaw[-lag:])
        return float(np.corrcoef(a, b)[0, 1])

    assert corr(0) > 0.8
    assert all(corr(0) > corr(lag) for lag in (-3, -2, -1, 1, 2, 3))


def _autocorr_f0(audio: np.ndarray, rate: int = 16000) -> float:
    estimates = []
    for start in range(0, len(audio) - 1024, 512):
        block = audio[start:start + 1024]
        if np.sqrt((block ** 2).mean()) < 0.05 * np.abs(audio).max():
            continue
        ac = np.correlate(block, block, "full")[1023:]
        lo, hi = rate // 500, rate // 60
        estimates.append(rate / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(estimates))


def test_emotion_changes_pitch_and_loudness():
    sad = synthesize_speech(100, "sad", np.random.default_rng(1), pitch_hz=120)
    surprised = synthesize_speech(100, "surprised", np.random.default_rng(1), pitch_hz=120)
    assert _autocorr_f0(sad.audio) < 0.8 * _autocorr_f0(surprised.audio)
    assert sad.f0[sad.f0 > 0].mean() < surprised.f0[surprised.f0 > 0].mean()
    angry = synthesize_speech(100, "angry", np.random.default_rng(1), pitch_hz=120)
    assert np.abs(angry.audio).max() > 2 * np.abs(sad.audio).max()


def test_text_describes_the_action_units():
    rng = np.random.default_rng(0)
    sad = describe_aus(parse_emotion("sad").au_vector(), "sad", "her", rng)
    assert "her" in sad.lower() and ("brow" in sad or "corner" in sad)
    texts = {describe_aus(parse_emotion("happy").au_vector(), "happy", "his", rng)
             for _ in range(10)}
    assert len(texts) > 3


def test_shards_round_trip(tmp_path):
    generate_dataset(tmp_path, SMALL, identities=(2, 1, 1), clips_per_identity=3, shard_size=4,
                     workers=2, progress=False)
    manifests = {split: read_manifest(tmp_path / split) for split in ("train", "val", "test")}
    assert manifests["train"]["samples"] == 6 and manifests["val"]["samples"] == 3
    ids = [set(m["identities"]) for m in manifests.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    sample = next(iter_raw_samples(shard_urls(tmp_path / "train")[0]))
    clip = decode_clip(sample)
    identity = int(clip.meta.identity.removeprefix("synth"))
    original = make_clip(SMALL, identity, int(clip.key.rsplit("clip", 1)[1]), "train")
    assert clip.meta == original.meta
    assert np.abs(clip.frames.astype(float) - original.frames).mean() < 4
    np.testing.assert_allclose(clip.aus, original.aus, atol=1e-3)
    np.testing.assert_allclose(clip.landmarks, original.landmarks, atol=1e-3)
    np.testing.assert_array_equal(clip.extras["mnsref.npy"], original.extras["mnsref.npy"])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_speech_has_visemes():
    speech = espeak_speech("hello there, how are you", 50)
    assert speech.audio.shape == (50 * 640,)
    assert speech.visemes.shape == (50, 3) and speech.visemes[:, 0].max() > 0.3
