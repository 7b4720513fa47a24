"""``python -m moee test``: generate the test split with trained models and score them.

:class:`EvaluationModule` is the LightningModule of the ``test`` subcommand. For every test
clip (a window of ``data.num_frames`` frames) and every compared model it animates the clip's
reference frame with the clip's audio under the clip's own emotion condition
(``parse_emotion("<emotion_name>@<intensity>")``: a basic emotion runs its expert, a compound
its two experts at its shares), then updates that model's :class:`MetricSuite` with the
generated and the ground-truth frames. At the end of the test epoch every suite is computed (its
states are
sums, reduced over DDP ranks), logged through Lightning as ``test/<model>/<column>``, and rank
0 writes the table (:mod:`moee.metrics.tables`): ``<output_dir>/<table>.{md,json,csv}``. The
run ends with ``N of M test clips scored, K skipped``: the clips of damaged test shards and
bad samples are the skipped ones, listed in ``<output_dir>/<table>_skipped.csv``.

Besides trained models a row may be ``ground_truth`` (the real frames: the metrics' floor,
e.g. FID 0, Emotion-Acc = the probe's accuracy) or ``reference`` (the still reference frame
repeated: a no-motion baseline). Two metric sets exist: :class:`SynthEmoMetrics` (probe
networks) and :class:`StandardMetrics` (Inception, I3D, LPIPS, SyncNet and face models from
local files, for real data).

Under DDP each rank reads its own test shards (the data module splits them by rank), so give
the test split at least as many shards as ranks: a rank without batches leaves its suites
un-updated and the others would wait for it at the reduction. Every model is held in memory
at once (one network per ``model`` row).
"""

from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.aggregation import SumMetric

from moee.data.media import SAMPLES_PER_FRAME
from moee.data.sampling import AUDIO_CONTEXT
from moee.emotions import EMOTION_CLASSES, NEUTRAL, EmotionCondition, parse_emotion
from moee.evaluation.probes import load_probes
from moee.inference.conditions import EmotionTrack
from moee.inference.pipeline import MoEEPipeline, load_stage_weights
from moee.inference.sampling import SamplerSettings
from moee.metrics._utils import require_file
from moee.metrics.face import AverageEmotionDistance, AverageKeypointDistance
from moee.metrics.frechet import FrechetInceptionDistance, FrechetVideoDistance
from moee.metrics.perceptual import LearnedPerceptualSimilarity
from moee.metrics.suite import MetricSuite
from moee.metrics.sync import LipSync
from moee.metrics.synthemo import synthemo_suite
from moee.metrics.tables import write_tables
from moee.models.moee_net import MoEENet, MoEENetConfig
from moee.models.objective import DiffusionObjective
from moee.models.weights import trained_objective
from moee.reports import BatchReport

log = logging.getLogger(__name__)

Source = Literal["model", "ground_truth", "reference"]


class SuiteFactory:
    """Builds a fresh :class:`MetricSuite` (one per compared model) reading [-1, 1] batches."""

    def build(self) -> MetricSuite:
        """A new suite with its own metric states."""
        raise NotImplementedError


class SynthEmoMetrics(SuiteFactory):
    """Every column measured by the SynthEmo probes (see :mod:`moee.metrics.synthemo`).

    Args:
        probe_size: side of the frames the probes were trained on (``synth probes --size``).
        probe_cache: cache folder of the probes (default ``$MOEE_CACHE`` or ``~/.cache/moee``).
        fvd_frames: frames per FVD sample.
        sync_max_offset: offsets tried by Sync-C/D, in frames.
    """

    def __init__(self, probe_size: int = 64, probe_cache: str | None = None,
                 fvd_frames: int = 8, sync_max_offset: int = 5) -> None:
        self.probe_size = probe_size
        self.probe_cache = probe_cache
        self.fvd_frames = fvd_frames
        self.sync_max_offset = sync_max_offset

    def build(self) -> MetricSuite:
        """The SynthEmo suite on the cached probes (a missing cache names the command)."""
        probes = load_probes(self.probe_size, self.probe_cache)
        return synthemo_suite(probes, self.fvd_frames, self.sync_max_offset)


class FaceMeshLandmarks:
    """MediaPipe's face mesh as an AKD landmark detector: images ``(n, 3, H, W)`` in [0, 1] →
    iBUG-68 ``(n, 68, 2)`` in [0, 1]; NaN where no face is found (AKD skips those)."""

    def __init__(self) -> None:
        from moee.data.faces import FaceMeshLandmarker

        self.landmarker = FaceMeshLandmarker()

    def __call__(self, images: Tensor) -> Tensor:
        """``(n, 3, H, W)`` → ``(n, 68, 2)``."""
        frames = images.clamp(0, 1).mul(255).round().byte().movedim(1, -1).cpu().numpy()
        return torch.from_numpy(self.landmarker(frames)[0]).to(images.device)


class ScriptedExtractor(nn.Module):
    """A TorchScript image network ``(n, 3, H, W)`` in [0, 1] → ``(n, c)`` from a local file
    (the expression-coefficient model of AED on real data)."""

    def __init__(self, path: str | Path, what: str) -> None:
        super().__init__()
        path = require_file(path, what, "export the model with torch.jit.save and set its path")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu")

    def forward(self, images: Tensor) -> Tensor:
        """``(n, 3, H, W)`` → ``(n, c)``."""
        return self.net(images)


class StandardMetrics(SuiteFactory):
    """The paper's columns with the standard networks, for real data (every file local).

    Args:
        inception: ``pt_inception-2015-12-05-6726825d.pth`` (FID).
        i3d: ``i3d_torchscript.pt`` (FVD).
        lpips_backbone: torchvision AlexNet (or VGG) checkpoint (LPIPS).
        syncnet: ``syncnet_v2.model`` (Sync-C/D).
        lpips_net: ``alex`` or ``vgg``.
        lpips_linear: LPIPS linear layers (default: the ``lpips`` package's).
        landmarks: ``mediapipe`` face mesh for AKD, or ``None`` to leave AKD out.
        expression: TorchScript expression-coefficient model for AED, or ``None`` to leave
            AED out.
        fvd_frames: frames per FVD sample (16 in the standard protocol).
        sync_max_offset: SyncNet's offsets (15 in the standard protocol).
    """

    def __init__(self, inception: str, i3d: str, lpips_backbone: str, syncnet: str,
                 lpips_net: Literal["alex", "vgg"] = "alex", lpips_linear: str | None = None,
                 landmarks: Literal["mediapipe"] | None = "mediapipe",
                 expression: str | None = None, fvd_frames: int = 16,
                 sync_max_offset: int = 15) -> None:
        self.inception, self.i3d, self.syncnet = inception, i3d, syncnet
        self.lpips = (lpips_backbone, lpips_net, lpips_linear)
        self.landmarks = landmarks
        self.expression = expression
        self.fvd_frames = fvd_frames
        self.sync_max_offset = sync_max_offset

    def build(self) -> MetricSuite:
        """The suite; a missing weights file is a one-line error naming what to download."""
        metrics = {
            "FID": FrechetInceptionDistance.from_weights(self.inception),
            "FVD": FrechetVideoDistance.from_weights(self.i3d, num_frames=self.fvd_frames),
            "LPIPS": LearnedPerceptualSimilarity.from_weights(*self.lpips),
            "Sync": LipSync.from_weights(self.syncnet, max_offset=self.sync_max_offset),
        }
        if self.landmarks == "mediapipe":
            metrics["AKD"] = AverageKeypointDistance(landmark_detector=FaceMeshLandmarks())
        if self.expression is not None:
            metrics["AED"] = AverageEmotionDistance(
                ScriptedExtractor(self.expression, "AED expression model"))
        return MetricSuite(metrics, value_range=(-1.0, 1.0))


@dataclass
class ModelEntry:
    """One row of the results table.

    Attributes:
        name: the row's name (a method, a checkpoint, an ablation).
        weights: stage exports or Lightning checkpoints, loaded in order (``source: model``).
        source: ``model`` (generate with ``weights``), ``ground_truth`` (the real frames) or
            ``reference`` (the still reference frame repeated).
        net: this model's network configuration (ablations); default: the module's ``net``.
        sampler: this row's sampler settings (step-count curves); default: the module's.
        reference_row: shown but not ranked (best values are chosen among the other rows);
            ``ground_truth`` and ``reference`` rows always are.
    """

    name: str
    weights: list[str] = field(default_factory=list)
    source: Source = "model"
    net: MoEENetConfig | None = None
    sampler: SamplerSettings | None = None
    reference_row: bool = False

    @property
    def ranked(self) -> bool:
        """Whether the row competes for the best value of a column."""
        return self.source == "model" and not self.reference_row


def clip_condition(name: str, intensity: float) -> EmotionCondition:
    """A clip's own emotion condition: its label at its intensity (neutral has none)."""
    name = parse_emotion(name).name
    return parse_emotion(name if name == NEUTRAL else f"{name}@{min(max(intensity, 0.0), 1.0)}")


def window_speech(batch: dict[str, Any]) -> Tensor:
    """The batch's audio without its context frames: ``(b, f · 640)``, frame-aligned."""
    frames = batch["frames"].shape[1]
    start = AUDIO_CONTEXT * SAMPLES_PER_FRAME
    return batch["audio"][:, start : start + frames * SAMPLES_PER_FRAME]


def suite_inputs(batch: dict[str, Any]) -> dict[str, Tensor]:
    """The metric-suite keys a test batch provides, except ``generated``.

    ``requested_emotion`` (an index of ``EMOTION_CLASSES``) is given only when every clip's
    emotion is one of them; ``requested_au`` is the clip's mean AU intensities.
    """
    names = [parse_emotion(n).name for n in batch["emotion_name"]]
    inputs = {"target": batch["frames"], "reference": batch["reference"],
              "audio": window_speech(batch), "requested_au": batch["emotion"]["au"]}
    if all(n in EMOTION_CLASSES for n in names):
        inputs["requested_emotion"] = torch.tensor(
            [EMOTION_CLASSES.index(n) for n in names], device=batch["frames"].device)
    return inputs


def sample_seed(seed: int, key: str) -> int:
    """The noise seed of one clip: fixed by its key, whatever the batch or DDP layout."""
    return seed + zlib.crc32(key.encode())


@torch.no_grad()
def generate_clips(pipeline: MoEEPipeline, batch: dict[str, Any], seed: int = 0) -> Tensor:
    """Animate every clip of a batch: ``(b, f, 3, H, W)`` in [-1, 1] (uint8-quantised).

    Each clip's reference frame, its frame-aligned audio and its own emotion condition
    (:func:`clip_condition`) go through :meth:`MoEEPipeline.generate`.
    """
    reference, target = batch["reference"], batch["frames"]
    if reference.shape[-1] != pipeline.size:
        raise ValueError(f"test frames are {reference.shape[-1]} px but the model makes "
                         f"{pipeline.size} px: set data.init_args.image_size {pipeline.size}")
    speech = window_speech(batch).float().cpu().numpy()
    clips = []
    for index, key in enumerate(batch["key"]):
        condition = clip_condition(batch["emotion_name"][index],
                                   float(batch["intensity"][index]))
        generator = torch.Generator().manual_seed(sample_seed(seed, key))
        frames = pipeline.generate(reference[index], speech[index], EmotionTrack.parse(condition),
                                   generator)
        clips.append(torch.from_numpy(np.ascontiguousarray(frames)))
    video = torch.stack(clips).to(target.device).movedim(-1, -3).float()  # b f 3 H W
    return video / 127.5 - 1


class EvaluationModule(L.LightningModule):
    """Scores one or several models on the test split (see the module docstring).

    Args:
        models: the rows of the table, in order.
        metrics: which metric networks (:class:`SynthEmoMetrics` or :class:`StandardMetrics`).
        net: network configuration of the ``model`` rows that have none of their own.
        sampler: sampler, steps, guidance and clip length (``clip_frames``) of generation.
        objective: the training objective whose noise schedule configures the sampler
            (default: the one recorded in the row's stage exports).
        dataset: the data set's name, in the table's title and file name.
        table: file name of the table (default: ``dataset`` in lower case).
        ablation: title the table as an ablation study (paper Table 5) instead of a comparison.
        output_dir: folder of the table files.
        seed: noise seed; every clip's noise depends only on it and the clip's key, so all
            models see the same noise for the same clip.
    """

    def __init__(
        self,
        models: list[ModelEntry],
        metrics: SuiteFactory,
        net: MoEENetConfig | None = None,
        sampler: SamplerSettings | None = None,
        objective: DiffusionObjective | None = None,
        dataset: str = "SynthEmo",
        table: str | None = None,
        ablation: bool = False,
        output_dir: str = "runs/eval",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not models:
            raise ValueError("EvaluationModule needs at least one entry in models")
        names = [entry.name for entry in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        self.save_hyperparameters(ignore=["metrics", "objective"])
        self.entries = models
        self.dataset = dataset
        self.table = table or dataset.lower().replace(" ", "_")
        self.ablation = ablation
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.nets = nn.ModuleDict()
        self.pipelines: dict[str, MoEEPipeline] = {}
        for index, entry in enumerate(models):
            if entry.source == "model":
                network = MoEENet(entry.net or net or MoEENetConfig())
                load_stage_weights(network, entry.weights)
                self.nets[str(index)] = network
                self.pipelines[entry.name] = MoEEPipeline(
                    network, entry.sampler or sampler or SamplerSettings(),
                    objective or trained_objective(entry.weights), progress=False)
        self.suites = nn.ModuleList(metrics.build() for _ in models)
        self.clips = SumMetric()
        self.results: dict[str, dict[str, float]] = {}
        self.scored = self.skipped = 0

    def render(self, entry: ModelEntry, batch: dict[str, Any]) -> Tensor:
        """The clips of one row for a batch: ``(b, f, 3, H, W)`` in [-1, 1]."""
        if entry.source == "ground_truth":
            return batch["frames"]
        if entry.source == "reference":
            return batch["reference"][:, None].expand_as(batch["frames"])
        return generate_clips(self.pipelines[entry.name], batch, self.seed)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Generate the batch's clips with every model and update its suite."""
        inputs = suite_inputs(batch)
        for entry, suite in zip(self.entries, self.suites, strict=True):
            suite.update({**inputs, "generated": self.render(entry, batch)})
        self.clips.update(torch.tensor(float(len(batch["key"])), device=self.device))

    def on_test_epoch_end(self) -> None:
        """Compute every suite (synced over ranks), log it, write the table on rank 0."""
        self.results = {entry.name: suite.compute()
                        for entry, suite in zip(self.entries, self.suites, strict=True)}
        clips = int(self.clips.compute())
        for suite in self.suites:
            suite.reset()
        self.clips.reset()
        for name, row in self.results.items():
            self.log_dict({f"test/{name}/{column}": value for column, value in row.items()},
                          rank_zero_only=True)
        if self.trainer.is_global_zero:
            kind = "ablations" if self.ablation else "comparison with ground truth"
            paths = write_tables(
                self.results, self.output_dir, self.table,
                title=f"{self.dataset}: {kind} ({clips} test clips)",
                exclude=[e.name for e in self.entries if not e.ranked],
                meta={"dataset": self.dataset, "clips": clips, "ablation": self.ablation},
            )
            log.info("results table: %s", ", ".join(str(p) for p in paths.values()))
        self.scored = clips

    def teardown(self, stage: str) -> None:
        """After testing, the run's last line: ``N of M test clips scored, K skipped`` (the
        clips of the test split's damaged data; every rank calls it), with
        ``<table>_skipped.csv``."""
        if stage != "test":
            return
        skips = getattr(self.trainer.datamodule, "skips", {}).get("test")
        report = BatchReport("test clips", "scored", done=self.scored,
                             skipped=skips.skipped_rows() if skips is not None else [])
        self.skipped = report.skipped_count
        if self.trainer.is_global_zero:
            report.finish(self.output_dir / f"{self.table}_skipped.csv")
