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

import sys

from jsonargparse import ArgumentParser

from moee.launch.sweep.report import collect, collect_report, status
from moee.launch.sweep.spec import Sweep
from moee.launch.sweep.submit import submit
from moee.reports import SKIPPED_JOBS, exit_line

ACTIONS = ("submit", "status", "collect")


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
