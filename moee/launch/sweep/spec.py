"""A sweep file and its jobs: the grid or job list, the templates, each job's ``fit`` command."""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

_TEMPLATE = re.compile(r"\{([A-Za-z_]\w*)\}")
MANIFEST = "sweep.json"
"""The sweep's record of its submitted jobs, in its folder."""


@dataclass
class SlurmResources:
    """What each job of the array asks SLURM for.

    Attributes:
        nodes: nodes per job (multi-node DDP/FSDP: Lightning reads the ranks from SLURM).
        gpus_per_node: GPUs per node; one task (process) per GPU, one task without GPUs.
        cpus_per_task: CPU cores per task (data-loader workers + 1).
        mem: memory per node, SLURM syntax (``64G``); ``None``: the partition's default.
        time: time limit in minutes.
        partition, account, qos: SLURM's own; ``None``: the cluster's default.
        array_parallelism: at most this many jobs of the array run at once.
        signal_delay_s: SIGUSR1 this many seconds before the limit (checkpoint + requeue).
        setup: shell lines run before each job (``module load ...``, ``source .venv/...``).
    """

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem: str | None = None
    time: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 64
    signal_delay_s: int = 90
    setup: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    """A sweep file.

    Attributes:
        name: the sweep's name (SLURM job name, default folder).
        configs: base ``fit`` config file(s), relative to the working directory; templated.
        grid: override key (or template variable) -> values; jobs are the cartesian product.
        jobs: explicit list of {override key: value} (instead of, or on top of, ``grid``).
        overrides: fixed overrides for every job; templated.
        root: the sweep's folder (job folders, TensorBoard runs, results).
        executor: ``slurm``, ``local`` (subprocesses on this machine via submitit), or
            ``auto`` (``slurm`` when ``sbatch`` is on the PATH).
        local_parallel: local jobs running at the same time (1: one after another).
        checkpoint_every_n_steps: ``last.ckpt`` period (``None``: at epoch ends and on stops).
        metrics: metric names (``val/total``) for ``collect``; empty: every metric.
        slurm: resources of each job on SLURM.
    """

    name: str
    configs: list[str]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    root: str = "runs/sweeps/{name}"
    executor: Literal["auto", "slurm", "local"] = "auto"
    local_parallel: int = 1
    checkpoint_every_n_steps: int | None = None
    metrics: list[str] = field(default_factory=list)
    slurm: SlurmResources = field(default_factory=SlurmResources)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Sweep:
        """Read a sweep file (YAML)."""
        data = yaml.safe_load(Path(path).read_text())
        if isinstance(data.get("configs"), str):
            data["configs"] = [data["configs"]]
        data["slurm"] = SlurmResources(**data.get("slurm") or {})
        sweep = cls(**data)
        if not sweep.grid and not sweep.jobs:
            raise ValueError(f"{path}: a sweep needs a 'grid' or a 'jobs' list")
        return sweep

    @property
    def folder(self) -> Path:
        """The sweep's root folder, templated with its name."""
        return Path(self.root.format(name=self.name))

    def expand(self) -> list[Job]:
        """Every job of the sweep: ``jobs`` entries × the ``grid`` product, in order."""
        keys = list(self.grid)
        points = [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]
        combos = [{**listed, **point} for listed in self.jobs or [{}] for point in points]
        return [self._job(index, combo) for index, combo in enumerate(combos)]

    def _job(self, index: int, values: dict[str, Any]) -> Job:
        variables = {_variable(key): value for key, value in values.items()}
        if len(variables) != len(values):
            raise ValueError(f"two sweep keys end in the same name: {sorted(values)}")
        name = ",".join(f"{k}={_text(v)}" for k, v in variables.items())
        name = re.sub(r"[^A-Za-z0-9=.,_+-]", "_", name)
        job_dir = self.folder / name
        variables.update(name=self.name, root=str(self.folder), job=name, job_dir=str(job_dir),
                         index=index)
        overrides = {k: v for k, v in values.items() if "." in k}
        overrides.update({k: _fill(v, variables) for k, v in self.overrides.items()})
        return Job(name=name, job_dir=str(job_dir),
                   configs=[_fill(c, variables) for c in self.configs], overrides=overrides)

    def job_argv(self, job: Job) -> list[str]:
        """The ``python -m moee`` arguments of one job (``fit ...``)."""
        argv = ["fit"]
        for config in job.configs:
            argv += ["--config", config]
        for key, value in job.overrides.items():
            argv += [f"--{key}", _text(value)]
        checkpoint = {"dirpath": f"{job.job_dir}/checkpoints",
                      "every_n_train_steps": self.checkpoint_every_n_steps}
        argv += [
            "--trainer.default_root_dir", job.job_dir,
            "--trainer.logger", _text(_component(
                "lightning.pytorch.loggers.TensorBoardLogger",
                save_dir=str(self.folder / "tensorboard"), name="", version=job.name)),
            "--trainer.callbacks+=" + _text(_component(
                "moee.launch.callbacks.ResumableCheckpoint", **checkpoint)),
            "--trainer.callbacks+=" + _text(_component(
                "moee.launch.callbacks.MetricsFile", path=f"{job.job_dir}/metrics.json")),
            "--ckpt_path", "last",
        ]
        return argv


@dataclass
class Job:
    """One ``fit`` run of a sweep."""

    name: str
    job_dir: str
    configs: list[str]
    overrides: dict[str, Any]

    @property
    def metrics_path(self) -> Path:
        """Where :class:`~moee.launch.callbacks.MetricsFile` writes the final metrics."""
        return Path(self.job_dir) / "metrics.json"

    def result(self) -> dict[str, Any] | None:
        """The final metrics record, or ``None`` while the job has not finished."""
        path = self.metrics_path
        return json.loads(path.read_text()) if path.is_file() else None


def _variable(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _text(value: Any) -> str:
    """A value as one command-line argument (YAML/JSON for anything but plain strings)."""
    return value if isinstance(value, str) else json.dumps(value)


def _fill(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ``{variable}`` in strings, recursively through lists and dicts (other braces,
    e.g. JSON values, are left alone)."""
    if isinstance(value, str):
        def replace(match: re.Match) -> str:
            if match[1] not in variables:
                raise KeyError(f"unknown sweep variable {{{match[1]}}} in {value!r}; "
                               f"known: {', '.join(sorted(variables))}")
            return str(variables[match[1]])

        return _TEMPLATE.sub(replace, value)
    if isinstance(value, list):
        return [_fill(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, variables) for k, v in value.items()}
    return value


def _component(class_path: str, **init_args: Any) -> dict[str, Any]:
    return {"class_path": class_path, "init_args": init_args}
