"""Submitting a sweep's jobs: a SLURM job array or local processes, through submitit."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from typing import Any

from moee.launch.sweep.spec import MANIFEST, Job, Sweep
from moee.utils import write_json


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
