"""Media I/O and the shard schema: round trips, atomic writes, manifests, corrupt input."""

import json

import numpy as np
import pytest

from moee.data.media import (
    SAMPLES_PER_FRAME,
    MediaError,
    check_speech,
    encode_mp4,
    encode_wav,
    probe_rates,
    read_audio,
    read_video,
    stream_frames,
    write_mp4,
)
from moee.data.shards import (
    Clip,
    ClipMeta,
    ShardError,
    ShardWriter,
    decode_clip,
    iter_raw_samples,
    read_manifest,
    sample_key,
    shard_urls,
    verify_shards,
    write_manifest,
)


def smooth_frames(num_frames=10, size=32):
    """Frames of a moving gradient (compresses well, so decode error is small)."""
    y, x = np.mgrid[0:size, 0:size]
    frames = [(np.stack([x * 4 + t * 3, y * 4, (x + y) * 2], -1) % 256) for t in range(num_frames)]
    return np.stack(frames).astype(np.uint8)


def tone(num_frames=10, freq=440.0):
    t = np.arange(num_frames * SAMPLES_PER_FRAME) / 16000
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_clip(identity="id0", clip="c0", num_frames=10, size=32, emotion="sad"):
    return Clip(
        key=sample_key(identity, clip),
        meta=ClipMeta(identity=identity, emotion=emotion, weights=[0, 0, 0, 0, 1, 0],
                      intensity=1.0, num_frames=num_frames, size=size),
        frames=smooth_frames(num_frames, size),
        audio=tone(num_frames),
        aus=np.full((num_frames, 17), 0.5, np.float32),
        landmarks=np.full((num_frames, 68, 2), 0.25, np.float32),
    )


def test_mp4_round_trip_with_audio(tmp_path):
    frames, audio = smooth_frames(), tone()
    path = write_mp4(tmp_path / "v.mp4", frames, audio=audio)
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape and fps == 25
    assert np.abs(decoded.astype(int) - frames).mean() < 4
    sound = read_audio(path)
    assert abs(len(sound) - len(audio)) <= SAMPLES_PER_FRAME
    n = min(len(sound), len(audio))
    assert np.corrcoef(sound[:n], audio[:n])[0, 1] > 0.95
    assert list(tmp_path.iterdir()) == [path]


def test_audio_is_resampled_to_16k_mono():
    stereo_44k = encode_wav(np.sin(np.arange(44100) / 20).astype(np.float32) * 0.5, 44100)
    audio = read_audio(stereo_44k)
    assert audio.dtype == np.float32 and abs(len(audio) - 16000) < 64


def test_bad_media_is_one_clear_line(tmp_path):
    with pytest.raises(MediaError, match="cannot read"):
        read_video(b"not a video at all")
    with pytest.raises(MediaError, match="no audio stream"):
        read_audio(encode_mp4(smooth_frames()))
    with pytest.raises(MediaError, match="silent"):
        check_speech(np.zeros(16000, np.float32))
    with pytest.raises(MediaError, match="even"):
        encode_mp4(np.zeros((2, 31, 31, 3), np.uint8))


def test_probe_rates_and_streamed_frames(tmp_path):
    frames = smooth_frames(12)
    assert probe_rates(encode_mp4(frames, audio=tone(12))) == (25.0, 16000)
    assert probe_rates(encode_mp4(frames)) == (25.0, None)
    assert probe_rates(encode_wav(tone(), 22050)) == (None, 22050)
    chunks = list(stream_frames(write_mp4(tmp_path / "v.mp4", frames), chunk=5))
    assert [len(c) for c in chunks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), read_video(tmp_path / "v.mp4")[0])
    for bad in (probe_rates, lambda source: list(stream_frames(source, 4))):
        with pytest.raises(MediaError, match="cannot read"):
            bad(b"not a video at all")
    with pytest.raises(MediaError, match="no video stream"):
        list(stream_frames(encode_wav(tone()), 4))


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(MediaError):
        write_mp4(tmp_path / "v.mp4", np.zeros((2, 31, 31, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_shard_round_trip_and_manifest(tmp_path):
    with ShardWriter(tmp_path, max_samples=2) as writer:
        for index in range(3):
            writer.write(make_clip(identity=f"id{index % 2}", clip=f"c{index}"))
    write_manifest(tmp_path, writer.infos, split="train")
    manifest = read_manifest(tmp_path)
    assert manifest["samples"] == 3 and manifest["frames"] == 30
    assert manifest["identities"] == ["id0", "id1"] and manifest["emotions"] == {"sad": 3}
    assert [s["samples"] for s in manifest["shards"]] == [2, 1]
    assert verify_shards(tmp_path) == []
    clips = [decode_clip(s) for url in shard_urls(tmp_path) for s in iter_raw_samples(url)]
    assert [c.key for c in clips] == ["id0__c0", "id1__c1", "id0__c2"]
    assert clips[0].aus.shape == (10, 17) and clips[0].landmarks.shape == (10, 68, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "shard-000000.tar", "shard-000001.tar"]


def test_crash_mid_shard_leaves_only_finished_shards(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_samples=2) as writer:
        for index in range(3):
            writer.write(make_clip(clip=f"c{index}"))
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]


def test_checksum_and_schema_errors_name_the_sample(tmp_path):
    with ShardWriter(tmp_path) as writer:
        writer.write(make_clip())
    write_manifest(tmp_path, writer.infos)
    shard = tmp_path / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify_shards(tmp_path) == ["shard-000000.tar"]

    raw = next(iter_raw_samples(shard_urls(tmp_path)[0]))
    raw["json"] = json.dumps({**json.loads(raw["json"]), "num_frames": 11}).encode()
    with pytest.raises(ShardError, match="'id0__c0'.*frames"):
        decode_clip(raw)
    del raw["lmk.npy"]
    with pytest.raises(ShardError, match="lacks lmk.npy"):
        decode_clip(raw)
    with pytest.raises(ShardError, match="no manifest.json"):
        read_manifest(tmp_path / "elsewhere")
