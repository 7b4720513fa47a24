"""Lip-sync scores Sync-C and Sync-D with the SyncNet evaluation protocol.

Protocol (``SyncNetInstance.evaluate`` of joonson/syncnet_python): for each video frame t a
window of ``window`` frames starting at t and the audio of the same time span are embedded by
the two streams; for every offset k in −max_offset…max_offset the distance between video
window t and audio window t − k is averaged over t (audio windows outside the clip count as
zero vectors, as SyncNet's zero padding makes them). Per clip, Sync-D is the minimum of these
mean distances and Sync-C (confidence) their median minus that minimum; the metric averages
both over clips. The best offset is the k of the minimum: video frame t shows audio t − k.
"""

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torchmetrics import Metric

from moee.metrics._utils import Frozen
from moee.metrics.syncnet import SyncNet, SyncNetAudioEmbedder, SyncNetVideoEmbedder


def offset_distances(video: Tensor, audio: Tensor, max_offset: int = 15) -> Tensor:
    """Mean distance between video and audio window embeddings at every offset.

    Args:
        video: video-window embeddings ``(b, n, d)``, one per frame t.
        audio: audio-window embeddings ``(b, n, d)`` aligned with them.
        max_offset: largest offset tried, in frames.

    Returns:
        ``(b, 2·max_offset + 1)``; column i is offset ``k = i − max_offset``, the mean over t of
        ``‖video[t] − audio[t − k]‖`` (with SyncNet's 1e-6 of ``pairwise_distance``).
    """
    padded = F.pad(audio, (0, 0, max_offset, max_offset))  # b (n + 2m) d
    # window j of frame t holds audio[t + j − m], i.e. offset k = m − j: flip to ascending k
    candidates = rearrange(padded.unfold(1, 2 * max_offset + 1, 1).flip(-1), "b n d o -> b n o d")
    distances = (video[:, :, None] - candidates + 1e-6).norm(dim=-1)  # b n o
    return distances.mean(1)


def best_offset(distances: Tensor) -> Tensor:
    """Offsets ``(b,)`` in frames with the smallest mean distance, from ``offset_distances``."""
    return distances.argmin(-1) - distances.shape[-1] // 2


def sync_scores(distances: Tensor) -> tuple[Tensor, Tensor]:
    """Per-clip ``(confidence, min distance)``, each ``(b,)``, from ``offset_distances``."""
    minimum = distances.min(-1).values
    return distances.median(-1).values - minimum, minimum


class LipSync(Metric):
    """Sync-C (higher is better) and Sync-D (lower is better) averaged over clips.

    ``update(generated, audio)``: clips ``(b, f, 3, H, W)`` in [0, 1] at ``fps`` and their
    audio ``(b, samples)`` at ``sample_rate``. Feed whole videos rather than short clips: with
    ``f`` not much above ``2·max_offset``, most of the offsets see mostly padding.
    ``compute()`` returns ``{"Sync-C": ..., "Sync-D": ...}``.

    Args:
        video_embedder: maps frame windows ``(n, window, 3, H, W)`` in [0, 1] to ``(n, d)``.
        audio_embedder: maps audio windows ``(n, audio_window)`` in [-1, 1] to ``(n, d)``.
        window: frames per video window (SyncNet: 5, i.e. 0.2 s).
        max_offset: offsets −max_offset…max_offset frames are tried (SyncNet: 15).
        fps: video frame rate; audio window t starts at sample ``t · sample_rate / fps``.
        sample_rate: audio sample rate.
        audio_window: samples per audio window; default the video window's span
            (``window · sample_rate / fps``).
    """

    higher_is_better = None
    is_differentiable = False
    full_state_update = False
    input_keys = ("generated", "audio")

    def __init__(
        self,
        video_embedder: Callable[[Tensor], Tensor],
        audio_embedder: Callable[[Tensor], Tensor],
        window: int = 5,
        max_offset: int = 15,
        fps: int = 25,
        sample_rate: int = 16000,
        audio_window: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if sample_rate % fps:
            raise ValueError(f"sample_rate {sample_rate} is not a multiple of fps {fps}")
        self.video_embedder = Frozen(video_embedder)
        self.audio_embedder = Frozen(audio_embedder)
        self.window = window
        self.max_offset = max_offset
        self.hop = sample_rate // fps
        self.audio_window = audio_window or window * self.hop
        for name in ("confidence_sum", "distance_sum", "clips"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @classmethod
    def from_weights(cls, weights: str | Path, **kwargs: object) -> "LipSync":
        """Sync-C/D with the original SyncNet (``syncnet_v2.model``) from a local file."""
        syncnet = SyncNet.from_weights(weights)
        return cls(
            SyncNetVideoEmbedder(syncnet),
            SyncNetAudioEmbedder(syncnet),
            window=SyncNetVideoEmbedder.window,
            audio_window=SyncNetAudioEmbedder.window_samples,
            **kwargs,
        )

    def offset_distances(self, generated: Tensor, audio: Tensor) -> Tensor:
        """Per-clip mean distances at every offset ``(b, 2·max_offset + 1)`` (see module doc)."""
        windows = min(generated.shape[1], audio.shape[1] // self.hop) - self.window + 1
        if windows < 1:
            raise ValueError(
                f"LipSync needs at least {self.window} frames of video and audio, got "
                f"{generated.shape[1]} frames and {audio.shape[1]} samples"
            )
        frames = torch.stack([generated[:, i : i + windows] for i in range(self.window)], dim=2)
        needed = (windows - 1) * self.hop + self.audio_window
        audio = F.pad(audio, (0, max(0, needed - audio.shape[1])))
        sounds = audio.unfold(1, self.audio_window, self.hop)[:, :windows]  # b n s
        video = self.video_embedder(rearrange(frames, "b n t c h w -> (b n) t c h w"))
        sound = self.audio_embedder(rearrange(sounds, "b n s -> (b n) s"))
        video, sound = (rearrange(x, "(b n) d -> b n d", n=windows) for x in (video, sound))
        return offset_distances(video, sound, self.max_offset)

    def update(self, generated: Tensor, audio: Tensor) -> None:
        """Add the Sync-C and Sync-D of each clip."""
        confidence, distance = sync_scores(self.offset_distances(generated, audio))
        self.confidence_sum += confidence.sum()
        self.distance_sum += distance.sum()
        self.clips += confidence.numel()

    def compute(self) -> dict[str, Tensor]:
        """``{"Sync-C": mean confidence, "Sync-D": mean minimum distance}``."""
        return {
            "Sync-C": self.confidence_sum / self.clips,
            "Sync-D": self.distance_sum / self.clips,
        }
