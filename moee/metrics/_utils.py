"""Small pieces shared by the metrics: frozen extractors, per-frame application, weight checks."""

from collections.abc import Callable
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn
from torchmetrics import Metric


def exists(value: object) -> bool:
    """Whether ``value`` is not ``None``."""
    return value is not None


class Frozen(nn.Module):
    """Runs a feature extractor in eval mode and without gradients, whatever its owner does.

    A metric that is an attribute of a ``LightningModule`` is switched to train mode with it;
    this wrapper keeps batch norm and dropout of the extractor in inference behaviour and its
    parameters out of any optimizer. ``fn`` may be an ``nn.Module`` (registered, so ``.to()``
    moves it) or any callable (e.g. a MediaPipe face-mesh wrapper).
    """

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        if isinstance(fn, nn.Module):
            fn.eval().requires_grad_(False)
        self.fn = fn

    def train(self, mode: bool = True) -> "Frozen":
        """Stay in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, *args: Tensor) -> Tensor:
        """Call the wrapped extractor."""
        return self.fn(*args)


def per_frame(fn: Callable[[Tensor], Tensor], video: Tensor) -> Tensor:
    """Apply an image function to every frame of a batch of clips.

    Args:
        fn: maps images ``(n, 3, H, W)`` to ``(n, ...)``.
        video: clips ``(b, f, 3, H, W)``.

    Returns:
        ``(b, f, ...)``.
    """
    b = video.shape[0]
    out = fn(rearrange(video, "b f c h w -> (b f) c h w"))
    return rearrange(out, "(b f) ... -> b f ...", b=b)


def optional_frozen(fn: Callable[..., Tensor] | None) -> Frozen | None:
    """``Frozen(fn)``, or ``None`` when no extractor is given."""
    return Frozen(fn) if exists(fn) else None


def extract(fn: Frozen | None, inputs: Tensor) -> Tensor:
    """Per-frame outputs of an optional extractor.

    With an extractor, ``inputs`` are clips ``(b, f, 3, H, W)`` and the result is
    ``(b, f, ...)``; without one, ``inputs`` already are those quantities and pass through.
    """
    return per_frame(fn, inputs) if exists(fn) else inputs


def require_file(path: str | Path, what: str, how: str) -> Path:
    """Return ``path`` as a ``Path`` if it is a file, else raise a one-line error.

    Args:
        path: where the weights should be.
        what: what is missing, e.g. ``"FID Inception weights"``.
        how: what to download and which argument to set.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}: {how}")
    return path


class RunningMean(Metric):
    """Mean of many values, kept as a float64 sum and count that DDP reduces by summing.

    Subclasses call ``self.accumulate(values)`` in ``update``.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def accumulate(self, values: Tensor) -> None:
        """Add every element of ``values`` to the running mean."""
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        """The mean of all accumulated values (NaN before any)."""
        return self.total / self.count
