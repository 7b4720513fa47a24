"""All evaluation metrics behind one batch format and one flat result dict."""

from collections.abc import Mapping

from torch import Tensor, nn
from torchmetrics import Metric

IMAGE_KEYS = ("generated", "target", "reference")


class MetricSuite(nn.Module):
    """Updates every metric from one batch and returns the paper's columns as floats.

    The batch is a dict with
        ``generated``: clips ``(b, f, 3, H, W)``, the model's frames;
        ``target``: clips ``(b, f, 3, H, W)``, the ground truth for the same audio;
        ``reference``: images ``(b, 3, H, W)``, the portrait the clips were made from;
        ``audio``: ``(b, samples)`` at 16 kHz in [-1, 1];
        ``requested_emotion`` (optional): ``(b,)`` class indices of the requested emotion;
        ``requested_au`` (optional): ``(b, A)`` requested AU intensities.
    Images are in ``value_range`` ([0, 1] by default; ``(-1, 1)`` for raw VAE decodes) and are
    mapped to [0, 1] for the metrics. Each metric declares the batch keys it reads
    (``input_keys``) and is skipped for batches that lack one of them, so the SynthEmo-only
    scores simply stay silent on real data. Every DDP rank must send batches with the same keys.

    ``compute()`` returns a flat ``{name: float}``: a metric that computes a tensor is reported
    under its key in ``metrics`` (use the paper's column names: ``FID``, ``FVD``, ``LPIPS``,
    ``AKD``, ``AED``, ``AU-MAE``, ``ID-Sim``); one that computes a dict contributes its own keys
    (``Sync-C``, ``Sync-D`` from :class:`LipSync`, ``Emotion-Acc`` and ``Emotion-Acc/<class>``
    from :class:`EmotionAccuracy`). Metrics that never received a batch are left out.

    From a Lightning callback: ``suite.update(batch)`` per test batch,
    ``pl_module.log_dict(suite.compute())`` and ``suite.reset()`` at epoch end; keep the suite
    on the module's device (``suite.to(pl_module.device)``).

    Args:
        metrics: name → metric.
        value_range: the (low, high) range of the batch's images.
    """

    def __init__(
        self, metrics: Mapping[str, Metric], value_range: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict(metrics)
        self.value_range = value_range

    def update(self, batch: Mapping[str, Tensor]) -> None:
        """Update every metric whose inputs are all in ``batch``."""
        low, high = self.value_range
        batch = {
            key: (value - low) / (high - low) if key in IMAGE_KEYS else value
            for key, value in batch.items()
        }
        for metric in self.metrics.values():
            if all(key in batch for key in metric.input_keys):
                metric.update(**{key: batch[key] for key in metric.input_keys})

    def compute(self) -> dict[str, float]:
        """Flat ``{column: value}`` of every metric that was updated (synced under DDP)."""
        results = {}
        for name, metric in self.metrics.items():
            if not metric.update_called:
                continue
            value = metric.compute()
            if isinstance(value, dict):
                results.update({key: float(item) for key, item in value.items()})
            else:
                results[name] = float(value)
        return results

    def reset(self) -> None:
        """Reset every metric."""
        for metric in self.metrics.values():
            metric.reset()
