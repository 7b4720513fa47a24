"""``python -m moee predict``: animation jobs as a LightningDataModule, the pipeline as a module.

A jobs file lists one video per row, as CSV with a header or as JSON lines::

    image,audio,emotion,output[,seed][,frames_dir]
    faces/anna.jpg,speech/hello.wav,happily surprised,out/anna_hs.mp4

Relative paths are resolved against the jobs file's folder. Under DDP, Lightning's predict
loop hands each rank its own share of the jobs. The run ends with ``N of M jobs written, K
skipped`` and, when jobs were skipped, ``skipped_jobs.csv`` (each job's row, inputs and reason)
in the folder of the outputs (:mod:`moee.reports`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from moee.errors import BadInputError
from moee.inference.pipeline import MoEEPipeline
from moee.inference.portrait import InputError, PortraitSettings
from moee.inference.sampling import SamplerSettings
from moee.models.moee_net import MoEENetConfig
from moee.models.objective import DiffusionObjective
from moee.reports import SKIPPED_JOBS, BatchReport
from moee.utils import gather_objects

log = logging.getLogger(__name__)

@dataclass
class AnimationJob:
    """One video to render: inputs, emotion condition and where to write it."""

    image: str
    audio: str
    output: str
    emotion: str = "neutral"
    seed: int | None = None
    frames_dir: str | None = None
    row: int = field(default=0, compare=False)
    """Its row in the jobs file (1 = the first job), for the report."""


def read_jobs(path: str | Path) -> list[AnimationJob]:
    """Jobs from a ``.csv`` (with a header) or ``.jsonl`` file; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"jobs file not found: {str(path)!r}")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix in (".jsonl", ".ndjson"):
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    else:
        raise InputError(f"jobs file {str(path)!r} must be .csv or .jsonl")
    names = {f.name for f in fields(AnimationJob)} - {"row"}
    jobs = []
    for number, row in enumerate(rows, start=1):
        row = {k.strip(): v for k, v in row.items() if v not in (None, "")}
        missing = {"image", "audio", "output"} - set(row)
        if missing or set(row) - names:
            raise InputError(f"{path}: job {number} needs image, audio, output (optional: "
                             f"emotion, seed, frames_dir), got {sorted(row)}")
        for key in ("image", "audio", "output", "frames_dir"):
            if key in row:
                row[key] = str(path.parent / row[key])
        if "seed" in row:
            row["seed"] = int(row["seed"])
        jobs.append(AnimationJob(**row, row=number))
    return jobs


def _as_list(jobs: list[AnimationJob]) -> list[AnimationJob]:
    return jobs


class AnimationJobs(L.LightningDataModule):
    """Animation jobs from a CSV or JSONL file (one video per job, one job per batch).

    Args:
        jobs: the jobs file.
        num_workers: data-loader workers (jobs are only paths: 0 is usually right).
    """

    def __init__(self, jobs: str, num_workers: int = 0) -> None:
        super().__init__()
        self.jobs_path = jobs
        self.num_workers = num_workers
        self.jobs: list[AnimationJob] = []

    def setup(self, stage: str | None = None) -> None:
        self.jobs = read_jobs(self.jobs_path)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.jobs, batch_size=1, num_workers=self.num_workers,
                          collate_fn=_as_list)


class AnimationModule(L.LightningModule):
    """Renders animation jobs with :class:`MoEEPipeline` in ``predict_step``.

    A job with bad inputs (no face, silent audio, unknown emotion, ...) is logged in one line
    and skipped; the others still render. At the end the jobs of every rank are reported
    (:class:`~moee.reports.BatchReport`) and ``skipped`` holds how many were skipped.

    Args:
        net: the network configuration (``preset: tiny`` or ``sd15``).
        weights: trained weights loaded in order: backbone, the six experts, the gates.
        sampler: sampler, steps, guidance scales, clip length, transition, seed.
        portrait: face detection, crop margin, paste-back.
        objective: the training objective (its noise schedule configures the sampler; default:
            the one recorded in the stage exports).
        size: face crop side in pixels (default: the VAE's sample size).
        progress: show a progress bar per job.
    """

    def __init__(
        self,
        weights: list[str],
        net: MoEENetConfig | None = None,
        sampler: SamplerSettings | None = None,
        portrait: PortraitSettings | None = None,
        objective: DiffusionObjective | None = None,
        size: int | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["objective"])
        self.pipeline = MoEEPipeline.from_weights(
            net or MoEENetConfig(), weights, settings=sampler, objective=objective, size=size,
            progress=progress,
        )
        self.net = self.pipeline.net
        self.portrait = portrait or PortraitSettings()
        self.results: list[dict] = []
        self.skipped = 0

    def predict_step(self, batch: list[AnimationJob], batch_idx: int) -> list[dict]:
        """Render each job of ``batch``; returns ``{"job", "output" | "error"}`` per job."""
        results = []
        for job in batch:
            try:
                animation = self.pipeline(job.image, job.audio, job.emotion,
                                          portrait=self.portrait, seed=job.seed)
            except BadInputError as error:
                log.error("job %s skipped: %s", job.output, error)
                results.append({"job": asdict(job), "error": str(error)})
                continue
            path = animation.save(job.output, job.frames_dir)
            log.info("wrote %s (%d frames)", path, len(animation.frames))
            results.append({"job": asdict(job), "output": str(path)})
        self.results += results
        return results

    def on_predict_epoch_start(self) -> None:
        self.results = []

    def teardown(self, stage: str) -> None:
        """After predicting (and after the progress bar has gone): report the jobs of every
        rank in the run's last line, and the CSV of the skipped ones."""
        if stage != "predict":
            return
        results = [r for rank_results in gather_objects(self.results) for r in rank_results]
        report = job_report(results)
        self.skipped = report.skipped_count
        if self.trainer.is_global_zero and report.total:
            report.finish(outputs_folder([r["job"]["output"] for r in results]) / SKIPPED_JOBS)


def job_report(results: list[dict]) -> BatchReport:
    """The :class:`BatchReport` of ``predict_step`` results, in jobs-file order (a job that a
    padded DDP sampler ran twice counts once)."""
    unique = {(r["job"]["row"], r["job"]["output"]): r for r in results}
    ordered = [unique[key] for key in sorted(unique)]
    skipped = [{"row": r["job"]["row"],
                **{k: v for k, v in r["job"].items() if v is not None and k != "row"},
                "reason": r["error"]} for r in ordered if "error" in r]
    return BatchReport("jobs", "written", done=len(ordered) - len(skipped), skipped=skipped)


def outputs_folder(outputs: list[str]) -> Path:
    """The deepest folder that holds every output."""
    folders = [os.path.dirname(os.path.abspath(o)) for o in outputs]
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()
