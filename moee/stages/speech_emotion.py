"""Stage 0 of the tiny preset: pretrain its speech-emotion encoder, as the real one was."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable

from moee.emotions import NUM_EXPERTS
from moee.models import pretrained
from moee.models.emotion_latents import SpeechEmotionEncoder
from moee.models.moee_net import SPEECH_ENCODER
from moee.models.weights import write_export
from moee.stages.base import linear_decay
from moee.stages.guard import check_finite


class SpeechEmotionModule(L.LightningModule):
    """A speech-emotion recogniser: the preset's speech-emotion encoder (random) with its 6-way
    classifier head, trained with cross-entropy on basic-emotion speech windows
    (:class:`~moee.data.speech_emotion.SpeechEmotionDataModule`).

    The real configuration loads an emotion-recognition HuBERT that hears tone in any voice and
    stays frozen. The tiny preset's stand-in learns it here, before the gating stage, which
    loads the export through ``init_weights`` and keeps it frozen
    (``GatingModule(freeze_speech_encoder=True)``): trained inside the gating stage instead,
    its head stayed at chance, and the speech videos read 8 of 48 emotions against 25 of 48
    with this pretraining (``benchmarks/README.md``).

    The export holds the encoder with its head, under their MoEENet names: Emotion-to-Latents
    reads the head's posterior as a label (``EmotionToLatents(speech_posterior=True)``).

    Args:
        preset: the architecture preset whose speech-emotion encoder to train.
        optimizer: optimizer factory.
        lr_decay: the last this fraction of ``trainer.max_steps`` decays the learning rate
            linearly to zero.
        export_path: where :meth:`on_fit_end` writes the encoder.
    """

    def __init__(self, preset: str = "tiny", optimizer: OptimizerCallable = torch.optim.AdamW,
                 lr_decay: float = 0.3, export_path: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.encoder = SpeechEmotionEncoder(
            pretrained.build_speech_encoder(pretrained.PRESETS[preset], None))
        if self.encoder.class_emotions is None or not torch.equal(
                self.encoder.class_emotions, torch.eye(NUM_EXPERTS)):
            raise ValueError(f"preset {preset!r}'s speech-emotion encoder has no classifier of "
                             "the basic emotions (its speech_encoder config needs their id2label)")
        self.optimizer_factory = optimizer
        self.lr_decay = lr_decay
        self.export_path = export_path

    def forward(self, speech: torch.Tensor) -> torch.Tensor:
        """(b s) 16 kHz → basic-emotion logits (b 6)."""
        return self.encoder(speech).logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        speech, emotions = batch
        loss = F.cross_entropy(self(speech), emotions)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(emotions))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        speech, emotions = batch
        right = (self(speech).argmax(1) == emotions).float().mean()
        self.log("val/accuracy", right, prog_bar=True, batch_size=len(emotions))

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if not self.lr_decay:
            return optimizer
        decay = linear_decay(self.trainer.max_steps, self.lr_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}

    def exported_weights(self) -> dict[str, torch.Tensor]:
        """The encoder's and its head's weights under their MoEENet names."""
        return {f"{SPEECH_ENCODER}.{name}": tensor.detach().cpu().contiguous()
                for name, tensor in self.encoder.state_dict().items()}

    def on_fit_end(self) -> None:
        if self.export_path and self.trainer.is_global_zero:
            weights = self.exported_weights()
            check_finite(weights, self.export_path)
            write_export(weights, self.export_path,
                         {"stage": type(self).__name__, "groups": "speech_encoder"})
