"""The original SyncNet (Chung & Zisserman 2016) and its two streams as window embedders.

The network is syncnet_python's ``S`` with its attribute names and layer order, so the
released ``syncnet_v2.model`` state dict loads as is. Its inputs are reproduced from
``SyncNetInstance.evaluate``: 224×224 BGR face crops in 0…255, 5 frames per window, and
13 MFCCs (python_speech_features defaults, 100 Hz) of int16-scaled 16 kHz audio, 20 MFCC
frames per window.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from moee.metrics._utils import exists, require_file

SYNCNET_HINT = (
    "download syncnet_v2.model (http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/"
    "syncnet_v2.model) and pass metrics.sync.weights=PATH"
)


def _conv_block(conv: nn.Module, norm: type[nn.Module], pool: nn.Module | None = None) -> list:
    """Convolution, batch norm, ReLU and an optional pooling layer."""
    return [conv, norm(conv.out_channels), nn.ReLU(inplace=True), *([pool] if exists(pool) else [])]


def _head(embed_dim: int) -> nn.Sequential:
    """The fully connected head shared by both streams' layouts."""
    return nn.Sequential(
        nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim)
    )


class SyncNet(nn.Module):
    """SyncNet's audio and lip streams.

    Args:
        embed_dim: embedding width (1024 in the released weights).
    """

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()
        conv2, bn2, pool2 = nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
        self.netcnnaud = nn.Sequential(
            *_conv_block(conv2(1, 64, 3, padding=1), bn2, pool2(1, 1)),
            *_conv_block(conv2(64, 192, 3, padding=1), bn2, pool2(3, stride=(1, 2))),
            *_conv_block(conv2(192, 384, 3, padding=1), bn2),
            *_conv_block(conv2(384, 256, 3, padding=1), bn2),
            *_conv_block(conv2(256, 256, 3, padding=1), bn2, pool2(3, stride=2)),
            *_conv_block(conv2(256, 512, (5, 4)), bn2),
        )
        self.netfcaud = _head(embed_dim)
        self.netfclip = _head(embed_dim)
        conv3, bn3, pool3 = nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d
        self.netcnnlip = nn.Sequential(
            *_conv_block(
                conv3(3, 96, (5, 7, 7), stride=(1, 2, 2)), bn3, pool3((1, 3, 3), (1, 2, 2))
            ),
            *_conv_block(
                conv3(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
                bn3,
                pool3((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),
            ),
            *_conv_block(conv3(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3),
            *_conv_block(conv3(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3),
            *_conv_block(
                conv3(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3, pool3((1, 3, 3), (1, 2, 2))
            ),
            *_conv_block(conv3(256, 512, (1, 6, 6)), bn3),
        )

    @classmethod
    def from_weights(cls, weights: str | Path) -> "SyncNet":
        """SyncNet with the released ``syncnet_v2.model`` (a state dict) from a local file."""
        path = require_file(weights, "SyncNet weights", SYNCNET_HINT)
        net = cls()
        state = torch.load(path, map_location="cpu", weights_only=True)
        # weights saved before BatchNorm's num_batches_tracked existed lack only those entries
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"{path} is not a SyncNet state dict: {(missing + unexpected)[:3]}")
        return net

    def forward_audio(self, mfccs: Tensor) -> Tensor:
        """MFCC windows ``(n, 1, 13, 20)`` → ``(n, embed_dim)``."""
        return self.netfcaud(self.netcnnaud(mfccs).flatten(1))

    def forward_video(self, frames: Tensor) -> Tensor:
        """BGR windows ``(n, 3, 5, 224, 224)`` in 0…255 → ``(n, embed_dim)``."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def _hz_to_mel(hz: Tensor) -> Tensor:
    return 2595 * torch.log10(1 + hz / 700)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700 * (10 ** (mel / 2595) - 1)


def mel_filterbank(num_filters: int, nfft: int, sample_rate: int) -> Tensor:
    """python_speech_features' triangular mel filters ``(num_filters, nfft // 2 + 1)``."""
    mels = torch.linspace(0, _hz_to_mel(torch.tensor(sample_rate / 2.0)).item(), num_filters + 2)
    bins = torch.floor((nfft + 1) * _mel_to_hz(mels.double()) / sample_rate)
    low, center, high = (bins[i : i + num_filters, None] for i in range(3))
    index = torch.arange(nfft // 2 + 1, dtype=torch.float64)
    rising = torch.where((index >= low) & (index < center), (index - low) / (center - low), 0)
    falling = torch.where((index >= center) & (index < high), (high - index) / (high - center), 0)
    return rising + falling


def mfcc(
    signal: Tensor,
    sample_rate: int = 16000,
    num_ceps: int = 13,
    num_filters: int = 26,
    nfft: int = 512,
    frame_length: float = 0.025,
    frame_step: float = 0.01,
    preemphasis: float = 0.97,
    lifter: int = 22,
) -> Tensor:
    """``python_speech_features.mfcc`` with its defaults, batched in torch (float64 inside).

    Pre-emphasis, rectangular 25 ms frames every 10 ms (the last one zero-padded), power
    spectrum, log mel filterbank, orthonormal DCT-II, sinusoidal lifter, and the log frame
    energy in place of the 0th coefficient.

    Args:
        signal: ``(n, samples)``.

    Returns:
        ``(n, num_ceps, frames)``.
    """
    eps = torch.finfo(torch.float64).eps
    x = signal.double()
    x = torch.cat([x[:, :1], x[:, 1:] - preemphasis * x[:, :-1]], dim=1)
    length, step = round(frame_length * sample_rate), round(frame_step * sample_rate)
    frames = 1 + max(0, math.ceil((x.shape[1] - length) / step))
    x = F.pad(x, (0, (frames - 1) * step + length - x.shape[1]))
    power = torch.fft.rfft(x.unfold(1, length, step), nfft).abs().square() / nfft  # n t k
    energy = power.sum(-1).clamp_min(eps)
    filters = mel_filterbank(num_filters, nfft, sample_rate).to(power.device)
    log_mel = (power @ filters.T).clamp_min(eps).log()  # n t m
    k = torch.arange(num_ceps, dtype=torch.float64, device=power.device)[:, None]
    m = torch.arange(num_filters, dtype=torch.float64, device=power.device)
    dct = torch.cos(math.pi * k * (2 * m + 1) / (2 * num_filters)) * math.sqrt(2 / num_filters)
    dct[0] /= math.sqrt(2)
    ceps = log_mel @ dct.T * (1 + lifter / 2 * torch.sin(math.pi * k.flatten() / lifter))
    ceps[..., 0] = energy.log()
    return rearrange(ceps, "n t c -> n c t").to(signal.dtype)


class SyncNetVideoEmbedder(nn.Module):
    """SyncNet's lip stream as a video-window embedder for :class:`~moee.metrics.LipSync`.

    Windows ``(n, 5, 3, H, W)`` of RGB face crops in [0, 1] are resized to 224 (bilinear, as
    cv2), turned to BGR in 0…255 and embedded → ``(n, 1024)``.
    """

    window = 5
    size = 224

    def __init__(self, syncnet: SyncNet) -> None:
        super().__init__()
        self.syncnet = syncnet

    def forward(self, windows: Tensor) -> Tensor:
        """``(n, 5, 3, H, W)`` → ``(n, 1024)``."""
        n = windows.shape[0]
        frames = F.interpolate(
            windows.flatten(0, 1), size=(self.size, self.size), mode="bilinear", align_corners=False
        )
        frames = rearrange(frames.flip(1) * 255, "(n t) c h w -> n c t h w", n=n)
        return self.syncnet.forward_video(frames)


class SyncNetAudioEmbedder(nn.Module):
    """SyncNet's audio stream as an audio-window embedder for :class:`~moee.metrics.LipSync`.

    Windows ``(n, 3440)`` of 16 kHz audio in [-1, 1] (the 20 MFCC frames SyncNet sees for 5
    video frames span 19·10 ms + 25 ms) are scaled to int16 range, turned to MFCCs
    ``(n, 1, 13, 20)`` and embedded → ``(n, 1024)``. Pre-emphasis starts afresh in each window,
    a one-sample difference from MFCCs of the whole track.
    """

    window_samples = 3440

    def __init__(self, syncnet: SyncNet) -> None:
        super().__init__()
        self.syncnet = syncnet

    def forward(self, windows: Tensor) -> Tensor:
        """``(n, 3440)`` → ``(n, 1024)``."""
        return self.syncnet.forward_audio(mfcc(windows * 32768)[:, None])
