"""``python -m moee test``: generate the test split with trained models and score them.

:class:`EvaluationModule` is the LightningModule of the ``test`` subcommand. For every test
clip (a window of ``data.init_args.sampling.num_frames`` frames) and every compared model it
animates the clip's reference frame with the clip's audio under the clip's own emotion condition
(its label, or per row its description or its speech's tone: :mod:`moee.evaluation.generation`),
then updates that model's metric suite (:mod:`moee.evaluation.suites`) with the generated and
the ground-truth frames. At the end of the test epoch every suite is computed (its states are
sums, reduced over DDP ranks), logged through Lightning as ``test/<model>/<column>``, and
rank 0 writes the table (:mod:`moee.metrics.tables`): ``<output_dir>/<table>.{md,json,csv}``.
The run ends with ``N of M test clips scored, K skipped``: the clips of damaged test shards and
bad samples are the skipped ones, listed in ``<output_dir>/<table>_skipped.csv``.

Besides trained models a row may be ``ground_truth`` (the real frames: the metrics' floor,
e.g. FID 0, Emotion-Acc = the probe's accuracy) or ``reference`` (the still reference frame
repeated: a no-motion baseline). Two metric sets exist:
:class:`~moee.evaluation.synthemo.SynthEmoMetrics` (probe networks) and
:class:`~moee.evaluation.suites.StandardMetrics` (Inception, I3D, LPIPS, SyncNet and face
models from local files, for real data).

Under DDP each rank reads its own test shards (the data module splits them by rank), so give
the test split at least as many shards as ranks: a rank without batches leaves its suites
un-updated and the others would wait for it at the reduction. Every model is held in memory
at once (one network per ``model`` row).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.aggregation import SumMetric

from moee.errors import MoEEError
from moee.evaluation.generation import ClipConditioning, generate_clips, suite_inputs
from moee.evaluation.suites import SuiteFactory
from moee.inference.pipeline import MoEEPipeline, load_stage_weights
from moee.inference.sampling import SamplerSettings
from moee.metrics.tables import write_tables
from moee.models.moee_net import MoEENet, MoEENetConfig
from moee.models.objective import DiffusionObjective
from moee.models.weights import trained_objective
from moee.reports import BatchReport

log = logging.getLogger(__name__)

Source = Literal["model", "ground_truth", "reference"]


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
        conditioning: what this row's clips are animated under: ``label`` (each clip's label
            at its intensity), ``text`` (its description) or ``speech`` (its speech's tone
            alone). Labels reach their experts directly, so a gate ablation shows only in the
            rows of the other two.
    """

    name: str
    weights: list[str] = field(default_factory=list)
    source: Source = "model"
    net: MoEENetConfig | None = None
    sampler: SamplerSettings | None = None
    reference_row: bool = False
    conditioning: ClipConditioning = "label"

    def __post_init__(self) -> None:
        """Refuse, in one line, a row whose ``source`` and ``weights`` contradict each other.

        A config's ``models`` list of the same length as an earlier config's is merged into
        it item by item (jsonargparse), so a row that leaves out ``source`` takes the earlier
        row's: a model row over ``configs/tiny/test.yaml``'s second row would silently score
        the ground truth."""
        if self.source == "model" and not self.weights:
            raise MoEEError(f"model row {self.name!r} has no weights: list its stage exports "
                            "or checkpoints, or give it source: ground_truth or reference")
        if self.source != "model" and self.weights:
            raise MoEEError(
                f"row {self.name!r} has weights but source {self.source!r}, perhaps taken "
                "from the row at its place in an earlier config (lists of rows of equal "
                "length merge item by item): give it source: model, or weights: [] if it "
                "is not a model")

    @property
    def ranked(self) -> bool:
        """Whether the row competes for the best value of a column."""
        return self.source == "model" and not self.reference_row


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
        return generate_clips(self.pipelines[entry.name], batch, self.seed,
                              entry.conditioning)

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
