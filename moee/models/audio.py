"""Speech features for lip motion: wav2vec2 hidden states of every layer, windowed per video frame.

Contract: a clip of ``f`` video frames at 25 fps comes with the 16 kHz waveform of the clip plus
``context_frames`` (2) frames on each side, ``(b, (f + 4) * 640)`` samples, cut from a track
normalised as a whole (:func:`moee.data.media.normalize_track`: the data normalise each clip's
audio, the pipeline the whole speech track), so that loudness means the same in a still's
six-frame window as in a long video's clip. wav2vec2 runs at
50 Hz (two tokens per video frame); the window of video frame ``i`` is the tokens of frames
``i - 2 .. i + 2`` (10 tokens), from all hidden states (embeddings + every layer), optionally
with each token's loudness. :class:`AudioProjection` maps each window to a few context tokens
for the audio cross-attention.
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


def token_loudness(waveform: torch.Tensor, hop: int) -> torch.Tensor:
    """log RMS of each ``hop``-sample stretch of a waveform: (b s) -> (b s/hop)."""
    return waveform.unflatten(-1, (-1, hop)).pow(2).mean(-1).add(1e-4).log()


class AudioEncoder(nn.Module):
    """A ``Wav2Vec2Model`` whose hidden states of every layer are cut into per-frame windows.

    Args:
        model: the wav2vec2 model (its total conv stride must be 320 samples, 50 Hz).
        context_frames: video frames of context on each side of a frame (window ``2c + 1``).
        loudness: also give every token the log RMS of its 320 samples. wav2vec2's first
            normalisation removes how loud a stretch is, which is what the jaw follows; a
            pretrained model makes up for it with phonetics, a random stand-in cannot (on
            SynthEmo a probe on the tiny random encoder's windows predicts held-out mouth
            opening at r 0.3, on the loudness alone at 0.8).
    """

    def __init__(self, model: Wav2Vec2Model, context_frames: int = 2,
                 loudness: bool = False) -> None:
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
        self.loudness = loudness
        self.stride = stride
        self.tokens_per_frame = SAMPLES_PER_FRAME // stride
        # padding that makes a (f + 2c) * 640 sample input give exactly 2 tokens per frame
        self.pad = (receptive - stride) // 2

    @property
    def window(self) -> int:
        """wav2vec2 tokens in one frame's window."""
        return (2 * self.context_frames + 1) * self.tokens_per_frame

    @property
    def token_features(self) -> int:
        """Features per token: the hidden states of the embedding output and every transformer
        layer, plus the loudness when it is on."""
        config = self.model.config
        return (config.num_hidden_layers + 1) * config.hidden_size + self.loudness

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
        """waveform (b, (f + 2c) * 640) at 16 kHz, cut from a normalised track -> windows
        (b f w d). It is not normalised again: on its own scale, a window of a quiet stretch
        would read as loud as any other.

        ``w`` tokens per window, ``d`` :attr:`token_features` per token: the ``l`` hidden
        states of ``c`` channels (layer-major), then the loudness when it is on.
        """
        frames = self.num_frames(waveform.shape[-1])
        hidden = self.model(F.pad(waveform, (self.pad, self.pad)),
                            output_hidden_states=True).hidden_states
        tokens = rearrange(torch.stack(hidden, 2), "b t l c -> b t (l c)")
        if self.loudness:
            loudness = token_loudness(waveform, self.stride).to(tokens.dtype)
            tokens = torch.cat([tokens, loudness[..., None]], -1)
        windows = tokens.unfold(1, self.window, self.tokens_per_frame)  # b f' d w
        return rearrange(windows[:, :frames], "b f d w -> b f w d")


class AudioProjection(nn.Module):
    """MLP from one frame's window of wav2vec2 states to ``num_tokens`` audio context tokens.

    (b f w d) -> (b f t o), ``d = token_features``, ``t = num_tokens``, ``o = out_dim``.
    """

    def __init__(
        self,
        window: int,
        token_features: int,
        hidden_dim: int = 512,
        out_dim: int = 768,
        num_tokens: int = 32,
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.mlp = nn.Sequential(
            nn.Linear(window * token_features, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, num_tokens * out_dim),
        )
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows (b f w d) -> tokens (b f t o)."""
        tokens = self.mlp(rearrange(windows, "b f w d -> b f (w d)"))
        return self.norm(rearrange(tokens, "b f (t d) -> b f t d", t=self.num_tokens))
