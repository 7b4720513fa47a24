"""``python -m moee sweep``: run a grid of ``fit`` jobs on SLURM (a job array) or locally.

    python -m moee sweep --config configs/sweeps/experts.yaml            # submit (or run locally)
    python -m moee sweep status --config configs/sweeps/experts.yaml     # where each job stands
    python -m moee sweep collect --config configs/sweeps/experts.yaml    # results.md + results.csv

A sweep file (see ``configs/sweeps/``) names the base config(s), a ``grid`` (the cartesian
product of its values) or a ``jobs`` list of overrides, fixed ``overrides``, and SLURM
resources. Keys are dotted ``fit`` overrides (``model.init_args.optimizer.init_args.lr``) or,
without a dot, plain template variables; every key's last component (``lr``, ``emotion``) is a
variable for ``{...}`` templates in config paths and override values, beside ``{name}``,
``{root}``, ``{job}`` (the job's name, from its grid values: ``lr=0.001,pixel_weight=0.1``),
``{job_dir}`` and ``{index}``.

Every job runs the normal ``fit`` (:func:`run_job`) with, added by the sweep:
``trainer.default_root_dir`` = ``<root>/<job>``, a TensorBoard run named ``<job>`` under
``<root>/tensorboard``, a :class:`~moee.launch.callbacks.ResumableCheckpoint` in
``<root>/<job>/checkpoints``, a :class:`~moee.launch.callbacks.MetricsFile`
(``<root>/<job>/metrics.json``) and ``ckpt_path: last`` — so a requeued or re-run job resumes
from its last checkpoint. On SLURM the array's jobs get ``--signal=USR1@<signal_delay_s>``:
Lightning's SLURM environment saves a checkpoint and requeues the job before its time limit.

``sweep collect`` ends with ``N of M jobs collected, K skipped`` and, for the jobs that failed
or have not finished, ``<root>/skipped_jobs.csv`` (state, reason, log); its exit status is 1
when any job is missing, unless ``--allow_skips true``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentParser

from moee.reports import SKIPPED_JOBS, BatchReport, exit_line
from moee.utils import csv_text, write_json, write_text

ACTIONS = ("submit", "status", "collect")
_TEMPLATE = re.compile(r"\{([A-Za-z_]\w*)\}")
MANIFEST = "sweep.json"


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


def run_job(argv: list[str], workdir: str) -> dict[str, Any] | None:
    """The job function (runs on the SLURM node or in a local subprocess): ``fit`` in
    ``workdir``; returns the job's final metrics record."""
    from moee.cli import main

    os.chdir(workdir)
    main(argv)
    job_dir = argv[argv.index("--trainer.default_root_dir") + 1]
    return Job(name="", job_dir=job_dir, configs=[], overrides={}).result()


def resolve_executor(sweep: Sweep, executor: str | None = None) -> str:
    """``slurm`` or ``local``: the requested executor, or ``auto``'s choice."""
    choice = executor or sweep.executor
    if choice == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return choice


def make_executor(sweep: Sweep, kind: str):
    """A submitit executor with the sweep's resources (``kind``: ``slurm`` or ``local``)."""
    import submitit

    res = sweep.slurm
    executor = submitit.AutoExecutor(folder=sweep.folder / "submitit" / "%j", cluster=kind)
    executor.update_parameters(
        name=sweep.name, timeout_min=res.time, nodes=res.nodes,
        tasks_per_node=max(1, res.gpus_per_node), gpus_per_node=res.gpus_per_node or None,
        cpus_per_task=res.cpus_per_task, slurm_mem=res.mem, slurm_partition=res.partition,
        slurm_account=res.account, slurm_qos=res.qos,
        slurm_array_parallelism=res.array_parallelism, slurm_signal_delay_s=res.signal_delay_s,
        slurm_setup=res.setup or None,
        slurm_additional_parameters={"signal": f"USR1@{res.signal_delay_s}"},
    )
    return executor


def submit(sweep: Sweep, executor: str | None = None, wait: bool = False,
           dry_run: bool = False) -> list[dict[str, Any]]:
    """Submit every job (one SLURM array) or run them locally; write ``<root>/sweep.json``.

    Local jobs run ``local_parallel`` at a time and this call returns when all have ended;
    SLURM jobs return at once unless ``wait``. Returns the manifest's job records.
    """
    kind = resolve_executor(sweep, executor)
    jobs = sweep.expand()
    argvs = [sweep.job_argv(job) for job in jobs]
    records = [{"name": job.name, "job_dir": job.job_dir, "argv": argv, "job_id": None}
               for job, argv in zip(jobs, argvs)]
    if dry_run:
        for record in records:
            print(" ".join(["python -m moee", *record["argv"]]))
        return records
    sweep.folder.mkdir(parents=True, exist_ok=True)
    workdir = os.getcwd()
    submitter = make_executor(sweep, kind)
    batch = len(argvs) if kind == "slurm" else max(1, sweep.local_parallel)
    for start in range(0, len(argvs), batch):
        chunk = argvs[start:start + batch]
        handles = submitter.map_array(run_job, chunk, [workdir] * len(chunk))
        for record, handle in zip(records[start:start + batch], handles):
            record["job_id"] = handle.job_id
            record["log"] = str(handle.paths.stderr)
        _write_manifest(sweep, kind, records)
        print(f"{kind}: submitted {len(handles)} job(s): {', '.join(h.job_id for h in handles)}")
        if kind == "local" or wait:
            for record, handle in zip(records[start:start + batch], handles):
                try:
                    handle.result()
                    print(f"  done   {record['name']}")
                except Exception as error:  # one failed job must not stop the sweep
                    record["error"] = str(error).strip().splitlines()[-1]
                    print(f"  FAILED {record['name']}: {record['error']} "
                          f"(log: {handle.paths.stderr})")
    _write_manifest(sweep, kind, records)
    return records


def _write_manifest(sweep: Sweep, kind: str, records: list[dict[str, Any]]) -> None:
    manifest = {"sweep": asdict(sweep), "executor": kind, "jobs": records}
    write_json(sweep.folder / MANIFEST, manifest)


def _records(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """{job name: its record in ``sweep.json``} (empty before a submit)."""
    path = sweep.folder / MANIFEST
    return {r["name"]: r for r in json.loads(path.read_text())["jobs"]} if path.is_file() else {}


def _slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: SLURM state} of the jobs SLURM still knows (``squeue``)."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=False).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def status(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per job: state (``done``, a SLURM state, ``stopped`` with a checkpoint, or
    ``not finished``), global step reached, job id."""
    ids = {name: record["job_id"] for name, record in _records(sweep).items()}
    states = _slurm_states([i for i in ids.values() if i])
    rows = []
    for job in sweep.expand():
        result, job_id = job.result(), ids.get(job.name)
        if result is not None:
            state = "done"
        elif job_id in states:
            state = states[job_id].lower()
        elif (Path(job.job_dir) / "checkpoints" / "last.ckpt").exists():
            state = "stopped (resumable)"
        else:
            state = "not finished"
        rows.append({"job": job.name, "state": state, "job_id": job_id or "",
                     "step": "" if result is None else result["global_step"]})
    return rows


def collect(sweep: Sweep) -> tuple[list[dict[str, Any]], str, str]:
    """Final metrics of every finished job: (rows, Markdown table, CSV text).

    Also writes ``<root>/results.md`` and ``<root>/results.csv``.
    """
    rows = []
    for job in sweep.expand():
        result = job.result()
        if result is not None:
            rows.append({"job": job.name, "step": result["global_step"], **result["metrics"]})
    names = sweep.metrics or sorted({k for row in rows for k in row} - {"job", "step"})
    columns = ["job", "step", *names]
    table = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    markdown = "\n".join(["| " + " | ".join(columns) + " |",
                          "|" + "---|" * len(columns),
                          *("| " + " | ".join(cells) + " |" for cells in table)]) + "\n"
    text = csv_text(columns, table)
    write_text(sweep.folder / "results.md", markdown)
    write_text(sweep.folder / "results.csv", text)
    return rows, markdown, text


def collect_report(sweep: Sweep) -> BatchReport:
    """The jobs ``collect`` finds finished, and for every other one its state and reason (the
    error ``submit`` recorded, or where it stands) and log."""
    records = _records(sweep)
    rows = status(sweep)
    skipped = [{"job": row["job"], "state": row["state"], "job_id": row["job_id"],
                "log": records.get(row["job"], {}).get("log", ""),
                "reason": records.get(row["job"], {}).get("error") or row["state"]}
               for row in rows if row["state"] != "done"]
    return BatchReport("jobs", "collected", done=len(rows) - len(skipped), skipped=skipped)


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def main(argv: list[str]) -> None:
    """``python -m moee sweep [submit|status|collect] --config SWEEP.yaml [options]``."""
    action = argv[0] if argv and argv[0] in ACTIONS else "submit"
    args = argv[1:] if argv and argv[0] in ACTIONS else argv
    parser = ArgumentParser(prog=f"python -m moee sweep {action}",
                            description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the sweep file (configs/sweeps/*.yaml)")
    if action == "collect":
        parser.add_argument("--allow_skips", type=bool, default=False,
                            help="exit 0 even when jobs failed or have not finished")
    if action == "submit":
        parser.add_argument("--executor", type=str | None, default=None,
                            help="slurm | local | auto (default: the sweep file's)")
        parser.add_argument("--wait", type=bool, default=False,
                            help="on SLURM, wait for every job to end")
        parser.add_argument("--dry_run", type=bool, default=False,
                            help="print each job's command and submit nothing")
    options = parser.parse_args(args)
    sweep = Sweep.load(options.config)
    if action == "submit":
        records = submit(sweep, options.executor, options.wait, options.dry_run)
        if any("error" in r for r in records):
            sys.exit(1)
    elif action == "status":
        for row in status(sweep):
            print(f"{row['state']:<20} step {row['step']!s:<8} {row['job_id']:<14} {row['job']}")
    else:
        _, markdown, _ = collect(sweep)
        print(markdown, end="")
        print(f"wrote {sweep.folder / 'results.md'} and .csv")
        report = collect_report(sweep)
        report.finish(sweep.folder / SKIPPED_JOBS)
        if report.skipped and not options.allow_skips:
            sys.exit(exit_line(report.skipped_count, "jobs"))
