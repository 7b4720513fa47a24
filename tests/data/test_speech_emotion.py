"""The speech-emotion recogniser's data: basic clips' audio only, random and centred windows."""

import io
import shutil
import tarfile

import numpy as np
import pytest
import torch

from moee.data.sampling import SPEECH_FRAMES, clip_audio, speech_window
from moee.data.shards import ShardError, decode_clip, iter_raw_samples, shard_urls
from moee.data.speech_emotion import (
    RandomWindows,
    SpeechEmotionDataModule,
    centred_windows,
    read_voices,
)
from moee.emotions import BASIC_EMOTIONS
from tests.clips import write_test_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """2 identities × (happy, sad, happily surprised, neutral), 20 frames each."""
    return write_test_shards(tmp_path_factory.mktemp("shards"), num_frames=20, size=32)


def test_voices_are_the_basic_clips_audio(shards):
    voices = read_voices(str(shards))
    clips = [decode_clip(raw) for url in shard_urls(shards) for raw in iter_raw_samples(url)]
    basic = [c for c in clips if c.meta.emotion in BASIC_EMOTIONS]
    assert len(voices) == len(basic) == 4  # the compound and neutral clips are not heard
    for voice, clip in zip(voices, basic):
        assert voice.emotion == BASIC_EMOTIONS.index(clip.meta.emotion)
        assert voice.num_frames == 20
        np.testing.assert_array_equal(voice.audio, clip_audio(clip))


def test_random_windows_are_reproducible_speech_of_the_clips(shards):
    voices = read_voices(str(shards))
    first = next(iter(RandomWindows(voices, 8, speed=0.15, seed=3)))
    again = next(iter(RandomWindows(voices, 8, speed=0.15, seed=3)))
    other = next(iter(RandomWindows(voices, 8, speed=0.15, seed=4)))
    windows, emotions = first
    assert windows.shape == (8, SPEECH_FRAMES * 640) and windows.dtype == torch.float32
    assert set(emotions.tolist()) <= {BASIC_EMOTIONS.index("happy"), BASIC_EMOTIONS.index("sad")}
    torch.testing.assert_close(again, first)
    assert not torch.equal(other[0], windows)
    plain, _ = next(iter(RandomWindows(voices[:1], 2, speed=0.0, seed=0)))
    starts = [speech_window(voices[0].audio, s, SPEECH_FRAMES)
              for s in range(voices[0].num_frames - SPEECH_FRAMES + 1)]
    assert any(np.array_equal(plain[0].numpy(), w) for w in starts)  # at speed 1, a real window


def test_validation_hears_each_clip_s_middle_window(shards):
    voices = read_voices(str(shards))
    windows, emotions = centred_windows(voices)
    middle = speech_window(voices[1].audio, (20 - SPEECH_FRAMES) // 2, SPEECH_FRAMES)
    np.testing.assert_array_equal(windows[1].numpy(), middle)
    assert emotions.tolist() == [v.emotion for v in voices]
    loader = SpeechEmotionDataModule(str(shards), val=str(shards)).val_dataloader()
    torch.testing.assert_close(next(iter(loader)), [windows, emotions])
    assert SpeechEmotionDataModule(str(shards)).val_dataloader() == []


def test_a_sample_without_readable_speech_is_a_one_line_error(shards, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(shards, folder)
    url = shard_urls(folder)[0]
    with tarfile.open(url) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(url, "w") as tar:
        for member, data in members:
            if member.name.endswith(".wav"):
                data = b"not a wav"
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(ShardError, match="no readable conditions") as error:
        read_voices(str(folder))
    assert "\n" not in str(error.value)
    with pytest.raises(ShardError, match="no clips of the emotions this stage reads"):
        read_voices(str(write_test_shards(tmp_path / "neutral", emotions=("neutral",),
                                          num_frames=20, size=32)))


def test_clips_shorter_than_a_speech_window_are_heard_whole():
    from moee.data.speech_emotion import Voice

    short = [Voice(np.ones(8 * 640, dtype=np.float32), 3, 8)]  # 8 frames < SPEECH_FRAMES
    windows, emotions = next(iter(RandomWindows(short, 2, speed=0.0, seed=0)))
    assert windows.shape == (2, SPEECH_FRAMES * 640) and emotions.tolist() == [3, 3]
    assert centred_windows(short)[0].shape == (1, SPEECH_FRAMES * 640)
