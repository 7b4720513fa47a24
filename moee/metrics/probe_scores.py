"""Scores that need exact labels (SynthEmo): emotion accuracy, AU error, identity similarity.

They take tensors or injected probe networks, so they work with any classifier, AU
estimator or identity embedder; nothing here depends on the SynthEmo package.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from moee.metrics._utils import RunningMean, exists, extract, optional_frozen


class EmotionAccuracy(Metric):
    """Emotion-Acc: share of clips whose predicted emotion is the requested one, per class.

    A clip's prediction is the argmax of its emotion probabilities averaged over frames.
    ``update(generated, requested_emotion)``: with an ``emotion_classifier``, clips
    ``(b, f, 3, H, W)`` in [0, 1]; without one, logits ``(b, f, C)`` or ``(b, C)``;
    ``requested_emotion`` is ``(b,)`` class indices (basic or compound classes alike).
    ``compute()`` returns ``{"Emotion-Acc": overall, "Emotion-Acc/<class>": ...}`` for every
    class that was requested at least once.

    Args:
        class_names: names of the C classes, in logit order (e.g. basic then compound).
        emotion_classifier: maps images ``(n, 3, H, W)`` to logits ``(n, C)``.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False
    input_keys = ("generated", "requested_emotion")

    def __init__(
        self,
        class_names: Sequence[str],
        emotion_classifier: Callable[[Tensor], Tensor] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.class_names = list(class_names)
        self.emotion_classifier = optional_frozen(emotion_classifier)
        zeros = torch.zeros(len(self.class_names), dtype=torch.float64)
        self.add_state("correct", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("requested", zeros.clone(), dist_reduce_fx="sum")

    def update(self, generated: Tensor, requested_emotion: Tensor) -> None:
        """Count the clips of each requested class and those predicted right."""
        probabilities = extract(self.emotion_classifier, generated).softmax(-1)
        if probabilities.ndim == 3:
            probabilities = probabilities.mean(1)  # b f c -> b c
        hits = probabilities.argmax(-1) == requested_emotion
        classes = len(self.class_names)
        self.requested += torch.bincount(requested_emotion, minlength=classes)
        self.correct += torch.bincount(requested_emotion[hits], minlength=classes)

    def compute(self) -> dict[str, Tensor]:
        """Overall accuracy and the accuracy of each requested class."""
        scores = {"Emotion-Acc": self.correct.sum() / self.requested.sum()}
        for name, correct, requested in zip(
            self.class_names, self.correct, self.requested, strict=True
        ):
            if requested > 0:
                scores[f"Emotion-Acc/{name}"] = correct / requested
        return scores


class AUError(RunningMean):
    """AU-MAE: mean absolute error of action-unit intensities against the requested ones.

    ``update(generated, requested_au)``: with an ``au_estimator``, clips ``(b, f, 3, H, W)``
    in [0, 1]; without one, intensities ``(b, f, A)`` or ``(b, A)``. ``requested_au`` is
    ``(b, A)``, the same for every frame of a clip.

    Args:
        au_estimator: maps images ``(n, 3, H, W)`` to intensities ``(n, A)``.
    """

    higher_is_better = False
    input_keys = ("generated", "requested_au")

    def __init__(
        self, au_estimator: Callable[[Tensor], Tensor] | None = None, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        self.au_estimator = optional_frozen(au_estimator)

    def update(self, generated: Tensor, requested_au: Tensor) -> None:
        """Add the absolute errors of every frame and AU."""
        predicted = extract(self.au_estimator, generated)
        if predicted.ndim == 3:
            requested_au = requested_au[:, None]  # b a -> b 1 a
        self.accumulate((predicted - requested_au).abs())


class IdentitySimilarity(RunningMean):
    """ID-Sim: mean cosine similarity between identity embeddings of frames and the reference.

    ``update(generated, reference)``: with an ``identity_embedder``, clips ``(b, f, 3, H, W)``
    and reference images ``(b, 3, H, W)`` in [0, 1]; without one, embeddings ``(b, f, d)``
    and ``(b, d)``.

    Args:
        identity_embedder: maps images ``(n, 3, H, W)`` to embeddings ``(n, d)``.
    """

    higher_is_better = True
    input_keys = ("generated", "reference")

    def __init__(
        self, identity_embedder: Callable[[Tensor], Tensor] | None = None, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        self.identity_embedder = optional_frozen(identity_embedder)

    def update(self, generated: Tensor, reference: Tensor) -> None:
        """Add the similarity of every generated frame to its clip's reference."""
        frames = extract(self.identity_embedder, generated)  # b f d
        if exists(self.identity_embedder):
            reference = self.identity_embedder(reference)
        self.accumulate(F.cosine_similarity(frames, reference[:, None], dim=-1))
