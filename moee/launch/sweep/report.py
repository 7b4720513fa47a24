"""Where a sweep's jobs stand and what they measured: ``sweep status`` and ``sweep collect``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from moee.launch.sweep.spec import MANIFEST, Sweep
from moee.metrics.tables import table_texts, write_texts
from moee.reports import BatchReport


def _manifest(sweep: Sweep) -> dict[str, Any]:
    """``sweep.json`` (empty before a submit)."""
    path = sweep.folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def _records(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """{job name: its record in ``sweep.json``} (empty before a submit)."""
    return {r["name"]: r for r in _manifest(sweep).get("jobs", [])}


def _slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: SLURM state} of the jobs SLURM still knows (``squeue``).

    Not submitit's ``SlurmJob.state``: submitit reads states with ``sacct``, which needs
    SLURM accounting; without it (``AccountingStorageType=accounting_storage/none``, as in the
    test SLURM and on many small clusters) every job would read ``UNKNOWN``. ``squeue`` asks
    the controller itself.
    """
    if not job_ids or not shutil.which("squeue"):
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=False).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def status(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per job: state (``done``, a SLURM state, ``stopped`` with a checkpoint, or
    ``not finished``), global step reached, job id."""
    manifest = _manifest(sweep)
    ids = {record["name"]: record["job_id"] for record in manifest.get("jobs", [])}
    slurm = manifest.get("executor", "slurm") == "slurm"  # local job ids are process ids
    states = _slurm_states([i for i in ids.values() if i]) if slurm else {}
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
    texts = table_texts(columns, [[_cell(row.get(c, "")) for c in columns] for row in rows])
    write_texts(sweep.folder, "results", texts)
    return rows, texts["md"], texts["csv"]


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
