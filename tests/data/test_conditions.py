"""Clip conditions read without video, and the batches the gating warm-up trains on."""

import io
import tarfile

import numpy as np
import pytest
import torch

from moee.data.conditions import ClipConditions, ConditionBatches, read_conditions
from moee.data.sampling import SamplingOptions, clip_track, speech_window
from moee.data.shards import ClipMeta, ShardError, decode_clip, iter_raw_samples, shard_urls
from tests.clips import write_test_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_test_shards(tmp_path_factory.mktemp("conditions"), num_frames=12, size=32)


def test_conditions_are_the_decoded_clips_own(shards):
    decoded = {clip.key: clip for url in shard_urls(shards)
               for clip in map(decode_clip, iter_raw_samples(url))}
    conditions = read_conditions(shards, lambda meta: meta["emotion"] != "neutral")
    assert len(conditions) == 6 and {c.meta.emotion for c in conditions} == {
        "happy", "sad", "happily surprised"}
    for condition in conditions:
        clip = next(c for c in decoded.values() if c.meta == condition.meta)
        np.testing.assert_array_equal(condition.aus, clip.aus)
        np.testing.assert_allclose(condition.track, clip_track(clip), atol=1e-6)


def test_conditions_never_decode_the_video(shards, tmp_path):
    """A shard whose videos are garbage still gives its conditions (its frames are never
    read); a sample without its AUs is one line naming it."""
    def rewrite(name: str, change) -> None:
        for shard in shards.glob("*.tar"):
            with tarfile.open(shard, "r") as source, \
                    tarfile.open(tmp_path / name / shard.name, "w") as target:
                for member in source.getmembers():
                    data = change(member.name, source.extractfile(member).read())
                    if data is None:
                        continue
                    member.size = len(data)
                    target.addfile(member, io.BytesIO(data))
        (tmp_path / name / "manifest.json").write_text((shards / "manifest.json").read_text())

    for name in ("garbage", "no_aus"):
        (tmp_path / name).mkdir()
    rewrite("garbage", lambda name, data: b"not a video" if name.endswith(".mp4") else data)
    assert len(read_conditions(tmp_path / "garbage")) == 8
    rewrite("no_aus", lambda name, data: None if name.endswith(".au.npy") else data)
    with pytest.raises(ShardError, match=r"no readable conditions: 'au.npy'"):
        read_conditions(tmp_path / "no_aus")


def test_condition_batches_carry_every_modality_of_apex_windows():
    """Every row: the clip's label x intensity, the mean AUs of a window drawn where the
    expression is at its apex (the ramp's windows never), that window's speech, its text."""
    frames = 24
    ramp = np.minimum(np.arange(frames) / 10, 1.0).astype(np.float32)  # apex from frame 10
    conditions = [ClipConditions(
        ClipMeta(identity=f"id{i}", emotion=emotion, weights=weights, intensity=intensity,
                 num_frames=frames, size=32, text=f"a {emotion} face"),
        aus=ramp[:, None] * (np.arange(17, dtype=np.float32) + 1 + i) / 20 + ramp[:, None]
        * np.linspace(0, 0.01, frames, dtype=np.float32)[:, None],  # every window differs
        audio=np.random.default_rng(i).standard_normal(frames * 640).astype(np.float32))
        for i, (emotion, weights, intensity) in enumerate([
            ("happy", [0, 0, 0, 1, 0, 0], 0.5),
            ("happily surprised", [0, 0, 0, 0.4, 0, 0.6], 1.0)])]
    options = SamplingOptions(num_frames=4, apex_fraction=0.9)
    batch = next(ConditionBatches(conditions, options, batch_size=16, seed=0))
    emotion = batch["emotion"]
    assert emotion.present.all() and emotion.speech.shape == (16, 16 * 640)
    assert set(batch["emotion_name"]) == {"happy", "happily surprised"}
    for row in range(16):
        clip = conditions[int(batch["emotion_name"][row] != "happy")]
        start, = [s for s in range(frames - 3)
                  if np.allclose(clip.aus[s:s + 4].mean(0), emotion.au[row].numpy())]
        assert start >= 9  # every frame of the window at 90 % of the apex or more
        np.testing.assert_array_equal(emotion.speech[row].numpy(),
                                      speech_window(clip.track, start, 4))
        assert emotion.text[row] == clip.meta.text
        torch.testing.assert_close(batch["intensity"][row], torch.tensor(clip.meta.intensity))
        torch.testing.assert_close(emotion.label[row], torch.tensor(clip.meta.weights)
                                   * clip.meta.intensity)
    again = next(ConditionBatches(conditions, options, batch_size=16, seed=0))
    assert torch.equal(again["emotion"].au, emotion.au)  # seeded


def test_condition_batches_refuse_what_they_cannot_draw(shards):
    conditions = read_conditions(shards)
    with pytest.raises(ValueError, match="at least one clip"):
        ConditionBatches(conditions, SamplingOptions(num_frames=4), batch_size=0)
    with pytest.raises(ShardError, match="shorter than a window of 13 frames"):
        ConditionBatches(conditions, SamplingOptions(num_frames=13), batch_size=4)
