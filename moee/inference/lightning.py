"""``python -m moee predict``: animation jobs as a LightningDataModule, the pipeline as a module.

A jobs file lists one video per row, as CSV with a header or as JSON lines::

    image,audio,emotion,output[,seed][,frames_dir]
    faces/anna.jpg,speech/hello.wav,happily surprised,out/anna_hs.mp4

Relative paths are resolved against the jobs file's folder. Under DDP, Lightning's predict
loop hands each rank its own share of the jobs.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from moee.data.media import MediaError
from moee.emotions import EmotionSpecError
from moee.inference.pipeline import MoEEPipeline, SamplerSettings
from moee.inference.portrait import InputError, PortraitSettings
from moee.models.moee_net import MoEENetConfig
from moee.stages.diffusion import DiffusionObjective

log = logging.getLogger(__name__)

USER_ERRORS = (InputError, MediaError, EmotionSpecError)
"""Errors that a bad job (not a bug) raises; their messages are one line."""


@dataclass
class AnimationJob:
    """One video to render: inputs, emotion condition and where to write it."""

    image: str
    audio: str
    output: str
    emotion: str = "neutral"
    seed: int | None = None
    frames_dir: str | None = None


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
    names = {f.name for f in fields(AnimationJob)}
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
        jobs.append(AnimationJob(**row))
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
    and skipped; the others still render.

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

    def predict_step(self, batch: list[AnimationJob], batch_idx: int) -> list[dict]:
        """Render each job of ``batch``; returns ``{"job", "output" | "error"}`` per job."""
        results = []
        for job in batch:
            try:
                animation = self.pipeline(job.image, job.audio, job.emotion,
                                          portrait=self.portrait, seed=job.seed)
            except USER_ERRORS as error:
                log.error("job %s skipped: %s", job.output, error)
                results.append({"job": asdict(job), "error": str(error)})
                continue
            path = animation.save(job.output, job.frames_dir)
            log.info("wrote %s (%d frames)", path, len(animation.frames))
            results.append({"job": asdict(job), "output": str(path)})
        return results
