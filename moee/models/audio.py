"""Speech features for lip motion: wav2vec2 hidden states of every layer, windowed per video frame.

Contract: a clip of ``f`` video frames at 25 fps comes with the 16 kHz waveform of the clip plus
``context_frames`` (2) frames on each side, ``(b, (f + 4) * 640)`` samples. wav2vec2 runs at
50 Hz (two tokens per video frame); the window of video frame ``i`` is the tokens of frames
``i - 2 .. i + 2`` (10 tokens), from all hidden states (embeddings + every layer).
:class:`AudioProjection` maps each window to a few context tokens for the audio cross-attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import Wav2Vec2Model

SAMPLE_RATE = 16_000
VIDEO_FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS


def normalize_waveform(waveform: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per sample (what wav2vec2 feature extractors do): (b s) -> (b s)."""
    mean = waveform.mean(-1, keepdim=True)
    return (waveform - mean) / (waveform.var(-1, keepdim=True, unbiased=False) + 1e-7).sqrt()


class AudioEncoder(nn.Module):
    """A ``Wav2Vec2Model`` whose hidden states of every layer are cut into per-frame windows.

    Args:
        model: the wav2vec2 model (its total conv stride must be 320 samples, 50 Hz).
        context_frames: video frames of context on each side of a frame (window ``2c + 1``).
    """

    def __init__(self, model: Wav2Vec2Model, context_frames: int = 2) -> None:
        super().__init__()
        config = model.config
        stride = math.prod(config.conv_stride)
        if SAMPLES_PER_FRAME % stride:
            raise ValueError(f"wav2vec2 stride {stride} must divide {SAMPLES_PER_FRAME} samples")
        receptive = 1 + sum(
            (k - 1) * math.prod(config.conv_stride[:i]) for i, k in enumerate(config.conv_kernel)
        )
        self.model = model
        self.context_frames = context_frames
        self.tokens_per_frame = SAMPLES_PER_FRAME // stride
        # padding that makes a (f + 2c) * 640 sample input give exactly 2 tokens per frame
        self.pad = (receptive - stride) // 2

    @property
    def window(self) -> int:
        """wav2vec2 tokens in one frame's window."""
        return (2 * self.context_frames + 1) * self.tokens_per_frame

    @property
    def num_layers(self) -> int:
        """Hidden states used per token (embedding output + every transformer layer)."""
        return self.model.config.num_hidden_layers + 1

    @property
    def hidden_size(self) -> int:
        """Width of one wav2vec2 hidden state."""
        return self.model.config.hidden_size

    def num_frames(self, num_samples: int) -> int:
        """Video frames ``f`` covered by a waveform of ``(f + 2c) * 640`` samples."""
        frames, rest = divmod(num_samples, SAMPLES_PER_FRAME)
        if rest or frames <= 2 * self.context_frames:
            raise ValueError(
                f"audio must hold (f + {2 * self.context_frames}) * {SAMPLES_PER_FRAME} samples, "
                f"got {num_samples}"
            )
        return frames - 2 * self.context_frames

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform (b, (f + 2c) * 640) at 16 kHz -> windows (b f w l c).

        ``w`` tokens per window, ``l`` hidden states per token, ``c`` wav2vec2 width.
        """
        frames = self.num_frames(waveform.shape[-1])
        waveform = F.pad(normalize_waveform(waveform), (self.pad, self.pad))
        hidden = self.model(waveform, output_hidden_states=True).hidden_states
        tokens = torch.stack(hidden, 2)  # b t l c, t = (f + 2c) * tokens_per_frame
        windows = tokens.unfold(1, self.window, self.tokens_per_frame)  # b f' l c w
        return rearrange(windows[:, :frames], "b f l c w -> b f w l c")


class AudioProjection(nn.Module):
    """MLP from one frame's window of wav2vec2 states to ``num_tokens`` audio context tokens.

    (b f w l c) -> (b f t d), ``t = num_tokens``, ``d = out_dim``.
    """

    def __init__(
        self,
        window: int,
        num_layers: int,
        channels: int,
        hidden_dim: int = 512,
        out_dim: int = 768,
        num_tokens: int = 32,
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.mlp = nn.Sequential(
            nn.Linear(window * num_layers * channels, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, num_tokens * out_dim),
        )
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows (b f w l c) -> tokens (b f t d)."""
        tokens = self.mlp(rearrange(windows, "b f w l c -> b f (w l c)"))
        return self.norm(rearrange(tokens, "b f (t d) -> b f t d", t=self.num_tokens))
