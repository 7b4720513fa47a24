"""Sync-C / Sync-D on synthetic clips whose mouth opening follows the audio envelope."""

import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from moee.metrics import (
    LipSync,
    SyncNet,
    SyncNetAudioEmbedder,
    SyncNetVideoEmbedder,
    best_offset,
    mfcc,
    offset_distances,
    sync_scores,
)

FPS, SAMPLE_RATE = 25, 16000
HOP = SAMPLE_RATE // FPS


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-norm rows ``(n, t)``."""
    return F.normalize(x - x.mean(-1, keepdim=True), dim=-1)


def mouth_embedder(windows: torch.Tensor) -> torch.Tensor:
    """Video windows ``(n, t, 3, H, W)`` → normalised mouth-opening sequence ``(n, t)``.

    The opening is drawn as the brightness of the lower half of the frame.
    """
    height = windows.shape[-2]
    return standardise(windows[..., height // 2 :, :].mean((-3, -2, -1)))


def envelope_embedder(windows: torch.Tensor) -> torch.Tensor:
    """Audio windows ``(n, t·HOP)`` → normalised per-frame RMS envelope ``(n, t)``."""
    chunks = windows.unflatten(-1, (-1, HOP))
    return standardise(chunks.square().mean(-1).sqrt())


def talking_clip(envelope: torch.Tensor, opening: torch.Tensor, size: int = 8):
    """Frames ``(1, f, 3, s, s)`` drawing ``opening`` and audio ``(1, f·HOP)`` of ``envelope``."""
    frames = torch.zeros(1, opening.numel(), 3, size, size)
    frames[..., size // 2 :, :] = opening[None, :, None, None, None]
    carrier = torch.sin(2 * math.pi * 200 * torch.arange(HOP) / SAMPLE_RATE)
    audio = (envelope[:, None] * carrier).reshape(1, -1)
    return frames, audio


def shifted_pair(frames: int, k: int, seed: int):
    """Envelope and a mouth opening that equals it delayed by k frames: opening[t] = env[t − k]."""
    generator = torch.Generator().manual_seed(seed)
    envelope = 0.2 + torch.rand(frames + 40, generator=generator)
    opening = envelope.roll(k)
    return envelope[20:-20], opening[20:-20]


def lip_sync() -> LipSync:
    return LipSync(mouth_embedder, envelope_embedder, window=5, max_offset=15, fps=FPS)


@pytest.mark.parametrize("k", [-7, -2, 0, 3, 11])
def test_best_offset_recovers_the_shift(k):
    frames, audio = talking_clip(*shifted_pair(80, k, seed=k + 100))
    distances = lip_sync().offset_distances(frames, audio)
    assert distances.shape == (1, 31)
    assert best_offset(distances).item() == k


def test_sync_scores_are_best_at_true_alignment():
    envelope, opening = shifted_pair(80, 0, seed=1)
    aligned = talking_clip(envelope, opening)
    shuffled = talking_clip(envelope, opening[torch.randperm(opening.numel())])
    scores = {}
    for name, clip in (("aligned", aligned), ("shuffled", shuffled)):
        metric = lip_sync()
        metric.update(*clip)
        scores[name] = {key: value.item() for key, value in metric.compute().items()}
    assert scores["aligned"]["Sync-C"] > scores["shuffled"]["Sync-C"] + 0.3
    assert scores["aligned"]["Sync-D"] < 1e-3 < scores["shuffled"]["Sync-D"]


def test_lip_sync_averages_clips():
    clips = [talking_clip(*shifted_pair(60, k, seed=k)) for k in (0, 4)]
    frames, audio = (torch.cat(parts) for parts in zip(*clips, strict=True))
    metric = lip_sync()
    metric.update(frames, audio)
    confidence, distance = sync_scores(metric.offset_distances(frames, audio))
    result = metric.compute()
    assert result["Sync-C"].item() == pytest.approx(confidence.mean().item())
    assert result["Sync-D"].item() == pytest.approx(distance.mean().item())
    assert metric.clips.item() == 2


def syncnet_calc_pdist(feat1: torch.Tensor, feat2: torch.Tensor, vshift: int) -> torch.Tensor:
    """syncnet_python's ``calc_pdist`` + ``mean``: distances indexed by ``vshift − offset``."""
    win_size = vshift * 2 + 1
    feat2p = F.pad(feat2, (0, 0, vshift, vshift))
    dists = [
        F.pairwise_distance(feat1[[i], :].repeat(win_size, 1), feat2p[i : i + win_size, :])
        for i in range(len(feat1))
    ]
    return torch.stack(dists, 1).mean(1)


def test_offset_distances_match_syncnet_python():
    video, audio = torch.randn(2, 12, 6), torch.randn(2, 12, 6)
    ours = offset_distances(video, audio, max_offset=4)
    for clip in range(2):
        reference = syncnet_calc_pdist(video[clip], audio[clip], vshift=4)
        torch.testing.assert_close(ours[clip], reference.flip(0))
        offset = 4 - reference.argmin()  # syncnet_python: offset = vshift − minidx
        assert best_offset(ours[clip : clip + 1]).item() == offset.item()


def test_too_short_clips_are_refused():
    with pytest.raises(ValueError, match="at least 5 frames"):
        lip_sync().update(torch.zeros(1, 4, 3, 8, 8), torch.zeros(1, 4 * HOP))


def test_mfcc_layout_and_energy_coefficient():
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(2, SyncNetAudioEmbedder.window_samples, generator=generator)
    features = mfcc(signal * 1000)
    assert features.shape == (2, 13, 20)  # SyncNet's 13 × 20 audio input
    # scaling the signal by a adds 2·log(a) to every log energy and changes nothing else
    louder = mfcc(signal * 2000)
    torch.testing.assert_close(louder[:, 0] - features[:, 0], torch.full((2, 20), 2 * math.log(2)))
    torch.testing.assert_close(louder[:, 1:], features[:, 1:], atol=1e-3, rtol=1e-4)


def python_speech_features_mfcc(signal: np.ndarray) -> np.ndarray:
    """A loop-by-loop transcription of ``python_speech_features.mfcc`` defaults ``(frames, 13)``."""
    signal = np.append(signal[0], signal[1:] - 0.97 * signal[:-1])
    frames = 1 + math.ceil((len(signal) - 400) / 160)
    signal = np.concatenate([signal, np.zeros((frames - 1) * 160 + 400 - len(signal))])
    power = np.abs(np.fft.rfft([signal[i * 160 : i * 160 + 400] for i in range(frames)], 512))
    power = power**2 / 512

    def hz2mel(hz):
        return 2595 * np.log10(1 + hz / 700.0)

    mels = np.linspace(hz2mel(0), hz2mel(8000), 28)
    bins = np.floor(513 * 700 * (10 ** (mels / 2595.0) - 1) / 16000)
    filters = np.zeros([26, 257])
    for j in range(26):
        for i in range(int(bins[j]), int(bins[j + 1])):
            filters[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            filters[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    features = scipy.fft.dct(np.log(power @ filters.T), type=2, axis=1, norm="ortho")[:, :13]
    features *= 1 + 11 * np.sin(np.pi * np.arange(13) / 22)
    features[:, 0] = np.log(power.sum(1))
    return features


def test_mfcc_matches_python_speech_features():
    signal = torch.randn(1, 5000, dtype=torch.float64) * 3000
    expected = python_speech_features_mfcc(signal[0].numpy())
    np.testing.assert_allclose(mfcc(signal)[0].T.numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    """A random SyncNet saved like the released state dict (without num_batches_tracked)."""
    torch.manual_seed(0)
    state = {
        key: value
        for key, value in SyncNet().state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(state, path)
    return path, state


def test_syncnet_loads_the_released_layout_and_embeds_windows(syncnet_file):
    path, state = syncnet_file
    metric = LipSync.from_weights(path)
    video, audio = metric.video_embedder.fn, metric.audio_embedder.fn
    assert torch.equal(
        video.syncnet.state_dict()["netcnnlip.0.weight"], state["netcnnlip.0.weight"]
    )
    assert isinstance(video, SyncNetVideoEmbedder) and isinstance(audio, SyncNetAudioEmbedder)
    assert video.syncnet is audio.syncnet  # one network, two streams
    assert metric.audio_window == 3440 and metric.window == 5
    assert video(torch.rand(1, 5, 3, 48, 48)).shape == (1, 1024)
    assert audio(torch.randn(1, 3440) * 0.1).shape == (1, 1024)


def test_syncnet_rejects_another_state_dict(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.model")
    with pytest.raises(ValueError, match="not a SyncNet state dict"):
        SyncNet.from_weights(tmp_path / "other.model")


def test_missing_syncnet_weights_are_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        LipSync.from_weights(tmp_path / "syncnet_v2.model")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"SyncNet weights not found at {tmp_path / 'syncnet_v2.model'}")
    assert "download syncnet_v2.model" in message and "metrics.sync.weights" in message
