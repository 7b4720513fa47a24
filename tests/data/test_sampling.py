"""Windows, audio alignment, motion frames, MNS and jitter of moee.data.sampling."""

import numpy as np
import pytest
import torch

from moee.data.batch import EmotionInputs, collate, normalize_images
from moee.data.faces import mouth_mask
from moee.data.media import SAMPLES_PER_FRAME
from moee.data.sampling import (
    MOTION_FRAMES,
    SPEECH_FRAMES,
    ClipSampler,
    SamplingOptions,
    clip_audio,
    draw_speech_speed,
    speech_window,
    window_audio,
)
from moee.emotions import ACTION_UNITS, BASIC_EMOTIONS
from tests.clips import (
    decode_audio_index,
    decode_frame_index,
    face_template,
    make_batch,
    make_test_clip,
)


@pytest.fixture(scope="module")
def clip():
    return make_test_clip(num_frames=30, size=32, mns_refs=3, text="a happy face")


def frame_indices(images: torch.Tensor) -> list[int]:
    return [decode_frame_index(f) for f in images.movedim(-3, -1).numpy()]


@pytest.mark.parametrize("start", [0, 1, 2, 7, 22])
def test_window_frames_audio_and_motion_align(clip, start):
    f = 8
    sampler = ClipSampler(SamplingOptions(num_frames=f))
    sample = sampler.sample(clip, start, clip_audio(clip), np.random.default_rng(0))
    assert frame_indices(sample["frames"]) == list(range(start, start + f))
    assert frame_indices(sample["motion_frames"]) == [max(start - 2, 0), max(start - 1, 0)]
    chunks = sample["audio"].numpy().reshape(-1, SAMPLES_PER_FRAME)
    assert len(chunks) == f + 4
    expected = [k if 0 <= k < 30 else None for k in range(start - 2, start + f + 2)]
    assert [decode_audio_index(c) for c in chunks] == expected
    # frame k owns exactly samples [k * 640, (k + 1) * 640)
    k = start + 3
    np.testing.assert_array_equal(chunks[5], clip.audio[k * 640 : (k + 1) * 640])
    # the speech-emotion encoder hears 16 frames centred on the window, inside the clip's 30
    speech = sample["emotion"]["speech"].numpy().reshape(-1, SAMPLES_PER_FRAME)
    first = {0: 0, 1: 0, 2: 0, 7: 3, 22: 14}[start]
    assert [decode_audio_index(c) for c in speech] == list(range(first, first + SPEECH_FRAMES))
    assert sample["start_frame"] == start
    np.testing.assert_allclose(sample["landmarks"].numpy(), clip.landmarks[start : start + f])


def test_speech_window_of_short_audio_is_zero_padded_after_it():
    audio = np.ones(3 * SAMPLES_PER_FRAME, dtype=np.float32)
    out = speech_window(audio, 1, 2)
    assert out.shape == (SPEECH_FRAMES * SAMPLES_PER_FRAME,)
    assert out[: 3 * SAMPLES_PER_FRAME].all() and not out[3 * SAMPLES_PER_FRAME :].any()
    assert speech_window(np.ones(40 * SAMPLES_PER_FRAME), 0, 20).shape == (20 * 640,)


def test_speed_perturbed_speech_window_resamples_around_the_same_centre():
    n = 30 * SAMPLES_PER_FRAME
    ramp = np.arange(n, dtype=np.float64)  # a ramp: each output sample shows where it was read
    plain = speech_window(ramp, 7, 8)
    np.testing.assert_array_equal(speech_window(ramp, 7, 8, speed=1.0), plain)
    centre = plain.mean()
    for speed in (0.8, 1.25):
        out = speech_window(ramp, 7, 8, speed=speed)
        assert out.shape == plain.shape
        # positions centre + (i - L/2) * speed: the same centre, read `speed` times as fast
        np.testing.assert_allclose(out - centre, (plain - centre) * speed, atol=1e-6)
    # reading past the audio gives silence, as the plain window's padding does
    fast = speech_window(np.ones(SPEECH_FRAMES * SAMPLES_PER_FRAME), 0, 8, speed=1.5)
    assert fast[SPEECH_FRAMES * SAMPLES_PER_FRAME // 2] == 1 and fast[0] == 0 and fast[-1] == 0


def test_speech_speeds_are_log_uniform_within_the_bounds():
    rng = np.random.default_rng(0)
    speeds = np.array([draw_speech_speed(rng, 0.25) for _ in range(20000)])
    assert speeds.min() >= 1 / 1.25 and speeds.max() <= 1.25
    logs = np.log(speeds) / np.log(1.25)  # uniform in [-1, 1]: mean 0, variance 1/3
    assert abs(logs.mean()) < 0.02 and abs(logs.var() - 1 / 3) < 0.01
    state = rng.bit_generator.state
    assert draw_speech_speed(rng, 0.0) == 1.0 and rng.bit_generator.state == state


def test_speech_speed_perturbs_only_the_speech_emotion_audio(clip):
    options = dict(num_frames=8, windows_per_clip=6)
    plain = ClipSampler(SamplingOptions(**options), seed=3)(clip)
    fast = ClipSampler(SamplingOptions(**options, speech_speed=0.2), seed=3)(clip)
    for a, b in zip(plain, fast):
        assert a["start_frame"] == b["start_frame"]
        torch.testing.assert_close(a["audio"], b["audio"])  # lip sync hears the clip as it is
        assert not torch.equal(a["emotion"]["speech"], b["emotion"]["speech"])
    with pytest.raises(ValueError, match="speech_speed"):
        SamplingOptions(speech_speed=1.0)


def test_window_audio_pads_both_edges():
    audio = np.arange(3 * SAMPLES_PER_FRAME, dtype=np.float32)
    out = window_audio(audio, 0, 3)
    assert out.shape == (7 * SAMPLES_PER_FRAME,)
    assert not out[: 2 * SAMPLES_PER_FRAME].any() and not out[-2 * SAMPLES_PER_FRAME :].any()
    np.testing.assert_array_equal(out[2 * SAMPLES_PER_FRAME : 5 * SAMPLES_PER_FRAME], audio)


def test_random_windows_are_seeded(clip):
    def starts(seed):
        sampler = ClipSampler(SamplingOptions(num_frames=4, windows_per_clip=20), seed=seed)
        return [s["start_frame"] for s in sampler(clip)]

    assert starts(1) == starts(1)
    assert starts(1) != starts(2)
    assert all(0 <= s <= 26 for s in starts(3))


def test_too_short_clip_gives_no_sample():
    short = make_test_clip(num_frames=5, size=32)
    assert ClipSampler(SamplingOptions(num_frames=8))(short) == []
    with pytest.raises(ValueError, match="long enough"):
        make_batch(short, num_frames=8)


def test_mns_fraction_matches_probability(clip):
    p, n = 0.3, 1500
    sampler = ClipSampler(SamplingOptions(num_frames=1, windows_per_clip=n, mns_prob=p), seed=0)
    masked = np.array([s["reference_is_masked"] for s in sampler(clip)])
    assert abs(masked.mean() - p) < 0.05
    plain = make_test_clip(num_frames=30, size=32)  # no MNS extras: always same-clip reference
    sampler = ClipSampler(SamplingOptions(num_frames=1, windows_per_clip=50, mns_prob=1.0))
    assert not any(s["reference_is_masked"] for s in sampler(plain))


def test_mns_reference_is_other_frame_with_masked_mouth(clip):
    options = SamplingOptions(num_frames=2, mns_prob=1.0)
    sample = ClipSampler(options)(clip)[0]
    refs_before = clip.extras["mnsref.npy"].copy()
    batch = normalize_images(collate([sample]))
    assert sample["reference_is_masked"]
    mask = batch["mouth_mask"][0, 0].bool()
    expected = torch.from_numpy(mouth_mask(clip.extras["mnslmk.npy"][0].astype(np.float32), 32,
                                           options.mask_dilation))
    assert torch.equal(mask, expected)
    reference = batch["reference"][0]
    assert (reference[:, mask] == 0).all()
    assert np.array_equal(clip.extras["mnsref.npy"], refs_before)  # the clip is untouched
    refs = torch.from_numpy(clip.extras["mnsref.npy"][0]).float().div(127.5).sub(1).permute(2, 0, 1)
    torch.testing.assert_close(reference[:, ~mask], refs[:, ~mask])
    # the motion frames would show the clip's own expression: the masked reference replaces them
    motion = batch["motion_frames"][0]
    assert motion.shape[0] == MOTION_FRAMES
    for frame in motion:
        assert torch.equal(frame, reference)
    same_clip = normalize_images(collate(ClipSampler(SamplingOptions(num_frames=2))(clip)))
    assert not torch.equal(same_clip["motion_frames"][0, 0], same_clip["reference"][0])


def test_unmasked_mns_references_keep_the_mouth_and_still_replace_the_motion_frames(clip):
    options = SamplingOptions(num_frames=2, windows_per_clip=400, mns_prob=1.0, mns_mask_prob=0.5)
    samples = ClipSampler(options, seed=0)(clip)
    masked = np.array([s["reference_is_masked"] for s in samples])
    assert abs(masked.mean() - 0.5) < 0.08
    refs = {torch.from_numpy(r).permute(2, 0, 1).contiguous().numpy().tobytes()
            for r in clip.extras["mnsref.npy"]}
    unmasked = next(s for s in samples if not s["reference_is_masked"])
    # an unmasked MNS reference is another clip's frame exactly, mouth and all
    assert unmasked["reference"].numpy().tobytes() in refs
    for frame in unmasked["motion_frames"]:
        assert torch.equal(frame, unmasked["reference"])
    with pytest.raises(ValueError, match="mns_mask_prob"):
        SamplingOptions(mns_mask_prob=1.5)


@pytest.mark.parametrize("chance, expected", [(None, 1 / 3), (0.8, 0.8), (0.0, 0.0)])
def test_mns_neutral_prob_sets_how_often_the_reference_is_the_neutral_face(chance, expected):
    clip = make_test_clip(num_frames=30, size=32, mns_refs=3)
    clip.extras["mnsref.npy"] = np.stack([np.full((32, 32, 3), 10 * (i + 1), np.uint8)
                                          for i in range(3)])  # reference i is all 10 (i + 1)
    clip.meta.extra["mns_emotions"] = ["angry", "neutral", "fear"]
    options = SamplingOptions(num_frames=1, windows_per_clip=900, mns_prob=1.0,
                              mns_mask_prob=0.0, mns_neutral_prob=chance)
    picks = np.array([int(s["reference"][0, 0, 0]) // 10 - 1
                      for s in ClipSampler(options, seed=0)(clip)])
    assert abs((picks == 1).mean() - expected) < 0.05
    assert set(picks[picks != 1]) <= {0, 2}
    assert abs((picks == 0).mean() - (picks == 2).mean()) < 0.08  # the others alike
    clip.meta.extra["mns_emotions"] = ["angry", "disgusted", "fear"]  # no neutral: any of them
    none_neutral = [int(s["reference"][0, 0, 0]) // 10 - 1 for s in ClipSampler(options)(clip)]
    assert set(none_neutral) == {0, 1, 2}
    with pytest.raises(ValueError, match="mns_neutral_prob"):
        SamplingOptions(mns_neutral_prob=-0.1)


def test_mouth_mask_covers_every_mouth_landmark():
    landmarks = face_template()
    for size in (32, 64, 256):
        mask = mouth_mask(landmarks, size, dilation=0.03)
        points = np.clip(np.round(landmarks[48:68] * size).astype(int), 0, size - 1)
        assert mask[points[:, 1], points[:, 0]].all()
        eyes = np.round(landmarks[36:48] * size).astype(int)
        assert not mask[eyes[:, 1], eyes[:, 0]].any()


def test_jitter_drops_modalities_and_perturbs_labels(clip):
    drop_all = SamplingOptions(num_frames=2, jitter_prob=1.0, modality_dropout=1.0)
    sample = ClipSampler(drop_all)(clip)[0]
    assert sample["emotion"]["present"].tolist() == [False, False, False, True]
    assert not sample["emotion"]["label"].any() and sample["emotion"]["text"] == ""
    noisy = SamplingOptions(num_frames=2, jitter_prob=1.0, modality_dropout=0.0,
                            windows_per_clip=200)
    samples = ClipSampler(noisy, seed=3)(clip)
    labels = torch.stack([s["emotion"]["label"] for s in samples])
    intensities = torch.tensor([s["intensity"] for s in samples])
    assert (labels >= 0).all()
    torch.testing.assert_close(labels.sum(1), intensities)
    assert labels.std(0).max() > 0.01 and 0.02 < intensities.std() < 0.2
    assert labels[:, BASIC_EMOTIONS.index("happy")].mean() > 0.7 * intensities.mean()
    again = ClipSampler(noisy, seed=3)(clip)
    assert torch.equal(labels, torch.stack([s["emotion"]["label"] for s in again]))


def test_apex_windows_skip_the_expression_ramp(clip):
    ramped = make_test_clip(num_frames=30, size=32)
    strength = np.linspace(0, 1, 30, dtype=np.float32).clip(0, 0.6) / 0.6  # apex from frame 18
    ramped.aus = np.zeros((30, len(ACTION_UNITS)), np.float32)
    ramped.aus[:, ACTION_UNITS.index("AU12")] = strength
    ramped.aus[:, ACTION_UNITS.index("AU26")] = np.random.default_rng(0).uniform(size=30)  # speech
    options = SamplingOptions(num_frames=4, apex_fraction=0.8, windows_per_clip=50)
    starts = ClipSampler(options).window_starts(ramped)
    assert starts.min() == int(np.argmax(strength >= 0.8)) and starts.max() == 26
    assert {s["start_frame"] for s in ClipSampler(options)(ramped)} <= set(starts.tolist())
    ramped.aus[:] = 0  # neutral: any window
    assert len(ClipSampler(options).window_starts(ramped)) == 27
    assert len(ClipSampler(SamplingOptions(num_frames=4)).window_starts(clip)) == 27


def test_modalities_are_restricted_and_single(clip):
    label_only = SamplingOptions(num_frames=2, modalities=["label"])
    sample = ClipSampler(label_only)(clip)[0]["emotion"]
    assert sample["present"].tolist() == [True, False, False, False]
    assert sample["text"] == "" and not sample["au"].any() and sample["label"].any()
    single = SamplingOptions(num_frames=2, single_modality_prob=1.0, windows_per_clip=100)
    presents = torch.stack([s["emotion"]["present"] for s in ClipSampler(single)(clip)])
    assert (presents.sum(1) == 1).all()
    assert presents.any(0).all()  # every modality gets to stand alone
    with pytest.raises(ValueError, match="unknown emotion modalities"):
        SamplingOptions(modalities=["smell"])


def test_batch_contract():
    clips = [make_test_clip(emotion="happy", num_frames=12, size=32),
             make_test_clip(name="c1", emotion="happily surprised", num_frames=12, size=32,
                            intensity=0.5)]
    batch = make_batch(clips, num_frames=6)
    b, f, size = 2, 6, 32
    shapes = {
        "frames": (b, f, 3, size, size), "reference": (b, 3, size, size),
        "motion_frames": (b, 2, 3, size, size), "reference_is_masked": (b,),
        "audio": (b, (f + 4) * 640),
        "emotion_index": (b,), "intensity": (b,), "landmarks": (b, f, 68, 2),
        "au_frames": (b, f, len(ACTION_UNITS)), "mouth_mask": (b, 1, size, size),
        "start_frame": (b,),
    }
    for key, shape in shapes.items():
        assert tuple(batch[key].shape) == shape, key
    emotion = batch["emotion"]  # collated straight into the network's EmotionInputs
    assert isinstance(emotion, EmotionInputs) and emotion.batch_size() == b
    assert emotion.label.shape == (b, 6) and emotion.au.shape == (b, 17)
    assert emotion.speech.shape == (b, SPEECH_FRAMES * 640)
    assert emotion.present.dtype == torch.bool
    assert batch["emotion_index"].tolist() == [BASIC_EMOTIONS.index("happy"), -1]
    assert batch["emotion_name"] == ["happy", "happily surprised"]
    torch.testing.assert_close(emotion.label.sum(1), torch.tensor([1.0, 0.5]))
    assert batch["frames"].dtype == torch.float32
    assert -1 <= batch["frames"].min() and batch["frames"].max() <= 1
    assert batch["start_frame"].tolist() == [3, 3]  # centred window
    assert batch["key"] == [c.key for c in clips] and batch["identity"] == ["id0", "id0"]


def test_resize_to_image_size():
    batch = make_batch(make_test_clip(num_frames=8, size=64),
                       options=SamplingOptions.evaluation(4, image_size=32))
    assert batch["frames"].shape[-2:] == (32, 32) and batch["mouth_mask"].shape[-1] == 32
