"""Evaluation during training: generate a few validation clips, log metrics and videos.

:class:`EvaluationCallback` animates the first validation clips with the stage's current
network every N training steps and/or epochs, exactly as ``python -m moee test`` does (same
conditions, same per-clip noise), logs every metric of its suite as ``eval/<column>`` (chosen
ones also in the progress bar) and, to TensorBoard, side-by-side videos — ground truth left,
generated right — as animated GIFs with the clips' audio.
"""

from __future__ import annotations

import io
import logging
from itertools import islice
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import move_data_to_device
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary

from moee.data.batch import normalize_images, to_numpy_frames
from moee.data.media import AUDIO_RATE, VIDEO_FPS
from moee.evaluation.generation import generate_clips, suite_inputs, window_speech
from moee.evaluation.suites import MetricSuite, SuiteFactory
from moee.inference.pipeline import MoEEPipeline
from moee.inference.sampling import SamplerSettings

log = logging.getLogger(__name__)


def gif_summary(tag: str, frames: np.ndarray, fps: int = VIDEO_FPS) -> Summary:
    """A TensorBoard image summary holding an animated GIF of ``(T, H, W, 3) uint8`` frames.

    What ``SummaryWriter.add_video`` writes, without its moviepy dependency.
    """
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)
    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3,
                          encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


class EvaluationCallback(L.Callback):
    """Every ``every_n_steps`` steps / ``every_n_epochs`` epochs: generate, score, log.

    The LightningModule must have ``net`` (a :class:`MoEENet`) and ``objective`` — every
    training stage does. Clips come from the first ``num_batches`` batches of the data
    module's validation loader; under DDP every rank scores its own batches (each must have
    that many) and the metrics are reduced over ranks. Rank 0 logs ``num_videos`` videos.

    Args:
        metrics: the metric networks (e.g. :class:`~moee.evaluation.synthemo.SynthEmoMetrics`).
        every_n_steps: evaluate when the global step is a multiple of it (``None``: never).
        every_n_epochs: evaluate at the end of every n-th epoch (``None``: never).
        num_batches: validation batches generated per evaluation.
        num_videos: videos (with audio) logged per evaluation.
        sampler: generation settings (few steps keep it cheap).
        prog_bar: columns also shown in the progress bar.
        seed: noise seed (per clip, as in ``moee test``).
    """

    def __init__(
        self,
        metrics: SuiteFactory,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = 1,
        num_batches: int = 1,
        num_videos: int = 2,
        sampler: SamplerSettings | None = None,
        prog_bar: tuple[str, ...] = ("Emotion-Acc", "Sync-C", "FID"),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.num_batches = num_batches
        self.num_videos = num_videos
        self.sampler = sampler or SamplerSettings(steps=8, clip_frames=8)
        self.prog_bar = set(prog_bar)
        self.seed = seed
        self.suite: MetricSuite | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Generate, score and log once; returns the metrics (the same on every rank)."""
        if self.suite is None:
            self.suite = self.metrics.build()
        suite = self.suite.to(pl_module.device)
        net = pl_module.net
        training = net.training
        pipeline = MoEEPipeline(net, self.sampler, pl_module.objective, progress=False)
        loader = trainer.datamodule.val_dataloader()
        videos = []
        try:
            for batch in islice(loader, self.num_batches):
                batch = normalize_images(move_data_to_device(batch, pl_module.device))
                generated = generate_clips(pipeline, batch, self.seed)
                suite.update({**suite_inputs(batch), "generated": generated})
                videos += [(batch["frames"][i], generated[i], window_speech(batch)[i])
                           for i in range(len(generated))]
            values = suite.compute()
        finally:
            suite.reset()
            net.train(training)
        for column, value in values.items():
            pl_module.log(f"eval/{column}", value, prog_bar=column in self.prog_bar)
        if trainer.is_global_zero:
            self.log_videos(trainer, videos[: self.num_videos])
        return values

    def log_videos(self, trainer: L.Trainer, videos: list) -> None:
        """Side-by-side GIFs (ground truth | generated) and audio to every TensorBoard logger."""
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for writer in writers:
            for index, (target, generated, audio) in enumerate(videos):
                frames = to_numpy_frames(torch.cat([target, generated], dim=-1))  # f 3 H 2W
                writer.file_writer.add_summary(
                    gif_summary(f"eval/video_{index}", frames), trainer.global_step)
                writer.add_audio(f"eval/audio_{index}", audio[None].float().cpu().clamp(-1, 1),
                                 trainer.global_step, sample_rate=AUDIO_RATE)
            writer.flush()
