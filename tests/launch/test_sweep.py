"""Sweeps: expansion and templating, collect, and 3-job sweeps on a real SLURM and locally."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from moee.cli import main
from moee.emotions import BASIC_EMOTIONS
from moee.launch.sweep.report import collect, status
from moee.launch.sweep.spec import Sweep
from moee.launch.sweep.submit import submit
from tests.processes import describe, kill_and_wait, processes_with_env

from .conftest import REPO, TINY_CONFIG, tiny_overrides


def test_shipped_sweeps_expand_with_templates():
    experts = Sweep.load(REPO / "configs/sweeps/experts.yaml")
    jobs = experts.expand()
    assert [j.name for j in jobs] == [f"emotion={e}" for e in BASIC_EMOTIONS]
    assert jobs[0].configs == ["configs/tiny/expert_angry.yaml"]
    assert jobs[0].overrides == {
        "model.init_args.emotion": "angry",
        "model.init_args.export_path": "runs/tiny/weights/expert_angry.safetensors"}
    assert jobs[0].job_dir == "runs/sweeps/experts/emotion=angry"
    grid = Sweep.load(REPO / "configs/sweeps/lr_lambda.yaml").expand()
    assert len(grid) == 6 and grid[0].name == "lr=0.0003,pixel_weight=0.05"
    assert grid[0].overrides["model.init_args.export_path"] == \
        "runs/sweeps/lr_lambda/lr=0.0003,pixel_weight=0.05/backbone.safetensors"
    paper = Sweep.load(REPO / "configs/sweeps/experts_slurm.yaml")
    assert paper.slurm.gpus_per_node == 8 and paper.expand()[5].configs == [
        "configs/expert_surprised.yaml", "configs/trainer/fsdp.yaml"]


def print_config(argv: list[str], capsys) -> dict:
    """The config ``python -m moee ARGV --print_config`` prints (parsed in this process)."""
    with pytest.raises(SystemExit):
        main([*argv, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def test_a_job_command_is_a_valid_fit_command(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    sweep = Sweep.load(REPO / "configs/sweeps/experts.yaml")
    printed = print_config(sweep.job_argv(sweep.expand()[4]), capsys)
    assert printed["model"]["init_args"]["emotion"] == "sad"
    assert printed["trainer"]["default_root_dir"] == "runs/sweeps/experts/emotion=sad"
    assert printed["trainer"]["logger"]["init_args"]["version"] == "emotion=sad"
    callbacks = [c["class_path"] for c in printed["trainer"]["callbacks"]]
    assert callbacks[-2:] == ["moee.launch.callbacks.ResumableCheckpoint",
                              "moee.launch.callbacks.MetricsFile"]
    assert printed["ckpt_path"] == "last"


def test_collect_tabulates_finished_jobs(tmp_path):
    sweep = Sweep(name="t", configs=["c.yaml"], grid={"model.init_args.x": [1, 2, 3]},
                  root=str(tmp_path / "{name}"))
    for i, job in enumerate(sweep.expand()[:2]):
        Path(job.job_dir).mkdir(parents=True)
        job.metrics_path.write_text(json.dumps(
            {"global_step": 10 + i, "epoch": 0, "metrics": {"train/total": 0.5 + i}}))
    rows, markdown, text = collect(sweep)
    assert [r["job"] for r in rows] == ["x=1", "x=2"]
    assert "| x=2 | 11 | 1.5 |" in markdown
    assert list(csv.reader(io.StringIO(text)))[1] == ["x=1", "10", "0.5"]
    assert [r["state"] for r in status(sweep)] == ["done", "done", "not finished"]


@pytest.mark.parametrize(("executor", "states"), [
    ("slurm", ["done", "running", "pending"]),
    ("local", ["done", "not finished", "stopped (resumable)"])])
def test_status_asks_squeue_about_slurm_jobs_only(executor, states, tmp_path, monkeypatch):
    """SLURM's state of a job still queued; a local sweep's job ids are process ids, which
    squeue must not be asked about."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/asked"\n'
                                    'echo "101 RUNNING"\necho "102 PENDING"\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep = Sweep(name="t", configs=["c.yaml"], grid={"model.init_args.x": [1, 2, 3]},
                  root=str(tmp_path / "{name}"))
    jobs = sweep.expand()
    Path(jobs[0].job_dir).mkdir(parents=True)
    jobs[0].metrics_path.write_text(json.dumps({"global_step": 4, "epoch": 0, "metrics": {}}))
    (Path(jobs[2].job_dir) / "checkpoints").mkdir(parents=True)
    (Path(jobs[2].job_dir) / "checkpoints" / "last.ckpt").touch()
    records = [{"name": j.name, "job_id": str(100 + i)} for i, j in enumerate(jobs)]
    (sweep.folder / "sweep.json").write_text(json.dumps({"executor": executor,
                                                         "jobs": records}))
    assert [r["state"] for r in status(sweep)] == states
    assert (bin_dir / "asked").exists() == (executor == "slurm")


def test_collect_over_failed_jobs_reports_them_and_exits_1(tmp_path, capsys):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "t", "configs": ["c.yaml"], "grid": {"model.init_args.x": [1, 2, 3]},
        "root": str(tmp_path / "{name}"), "executor": "local"}))
    sweep = Sweep.load(sweep_file)
    jobs = sweep.expand()
    Path(jobs[0].job_dir).mkdir(parents=True)
    jobs[0].metrics_path.write_text(json.dumps({"global_step": 4, "epoch": 0, "metrics": {}}))
    records = [{"name": j.name, "job_id": str(100 + i), "log": f"{j.job_dir}.err"}
               for i, j in enumerate(jobs)]
    records[1]["error"] = "error: checkpoint not found: 'runs/backbone.safetensors'"
    (sweep.folder / "sweep.json").write_text(json.dumps({"jobs": records}))
    with pytest.raises(SystemExit) as info:
        main(["sweep", "collect", "--config", str(sweep_file)])
    assert info.value.code == ("error: 2 jobs skipped (see the line above); exit status 1 "
                               "(--allow_skips accepts skips)")
    report = sweep.folder / "skipped_jobs.csv"
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"1 of 3 jobs collected, 2 skipped (reasons: {report})"
    rows = list(csv.DictReader(report.open()))
    assert [(r["job"], r["state"], r["reason"]) for r in rows] == [
        ("x=2", "not finished", "error: checkpoint not found: 'runs/backbone.safetensors'"),
        ("x=3", "not finished", "not finished")]
    assert rows[0]["log"] == f"{jobs[1].job_dir}.err"
    main(["sweep", "collect", "--config", str(sweep_file), "--allow_skips", "true"])


def tiny_sweep(shards: Path, root: Path, executor: str) -> Sweep:
    """Three tiny sad-expert jobs (learning rates), 2 steps each."""
    return Sweep(name=f"tiny_{executor}", configs=[str(TINY_CONFIG)],
                 grid={"model.init_args.optimizer.init_args.lr": [1e-3, 2e-3, 3e-3]},
                 overrides=tiny_overrides(shards), root=str(root / "{name}"),
                 executor=executor, local_parallel=3, metrics=["train/total"])


def assert_three_finished(sweep: Sweep) -> None:
    rows, markdown, _ = collect(sweep)
    assert [r["job"] for r in rows] == ["lr=0.001", "lr=0.002", "lr=0.003"], markdown
    assert all(r["step"] == 2 for r in rows)
    assert all(0 < r["train/total"] < 100 for r in rows)
    assert {r["state"] for r in status(sweep)} == {"done"}
    runs = sorted(p.name for p in (sweep.folder / "tensorboard").iterdir())
    assert runs == ["lr=0.001", "lr=0.002", "lr=0.003"]  # TensorBoard runs named by override
    for row in rows:
        assert (sweep.folder / row["job"] / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_local_sweep_runs_three_jobs_and_collects(shards, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = tiny_sweep(shards, tmp_path, "local")
    records = submit(sweep)
    assert all("error" not in r for r in records), records
    assert_three_finished(sweep)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_slurm(folder: Path) -> list[subprocess.Popen]:
    """munged + slurmctld + slurmd on this machine, one partition of this machine's CPUs."""
    host = socket.gethostname()
    cpus = os.cpu_count() or 1
    for sub in ("state", "spool", "log", "munge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=moeetest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=localhost NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    os.environ["SLURM_CONF"] = str(conf)
    socket_path = folder / "munge" / "munge.socket"
    daemons = [subprocess.Popen(["munged", "--force", "--foreground",
                                 f"--socket={socket_path}", f"--pid-file={folder}/munged.pid",
                                 f"--log-file={folder}/log/munged.log"])]
    time.sleep(0.5)
    # slurm finds munge through its default socket; point it at ours via the auth option
    with conf.open("a") as f:
        f.write(f"AuthInfo=socket={socket_path}\n")
    daemons.append(subprocess.Popen(["slurmctld", "-D", "-f", str(conf)]))
    time.sleep(1.0)
    daemons.append(subprocess.Popen(["slurmd", "-D", "-N", "localhost", "-f", str(conf)]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        if info.stdout.strip() in ("idle", "mixed", "allocated"):
            return daemons
        time.sleep(0.5)
    _stop(daemons)
    raise RuntimeError(f"the test SLURM did not come up: sinfo says {info.stdout!r} "
                       f"{info.stderr!r}; logs in {folder}/log")


def _cancel_jobs_and_wait(timeout: float = 60) -> None:
    """Cancel every job of the test SLURM and wait until it knows none (their steps ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True,
                              text=True).stdout.split()
        if not jobs:
            return
        subprocess.run(["scancel", *jobs], capture_output=True)
        time.sleep(0.5)


def _stop(daemons: list[subprocess.Popen]) -> None:
    for process in reversed(daemons):
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _install_slurm() -> str | None:
    """Install slurm-wlm and munge with apt if they are missing; the reason if impossible."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed and cannot be (needs root and apt-get)"
    result = subprocess.run("apt-get install -y slurm-wlm munge || (apt-get update && "
                            "apt-get install -y slurm-wlm munge)", shell=True,
                            capture_output=True, text=True,
                            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if result.returncode != 0:
        return f"apt-get could not install slurm-wlm munge: {result.stderr.strip()[-300:]}"
    return None


@pytest.fixture
def slurm(tmp_path_factory):
    """A real single-node SLURM (slurmctld + slurmd + munged as root on loopback)."""
    reason = _install_slurm()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("the test SLURM runs its daemons as root")
    folder = tmp_path_factory.mktemp("slurm")
    previous = os.environ.get("SLURM_CONF")
    try:
        daemons = _start_slurm(folder)
    except (RuntimeError, OSError) as error:
        pytest.skip(f"slurmctld cannot start here: {error}")
    try:
        yield folder
    finally:
        _cancel_jobs_and_wait()  # before the daemons go: steps need them to finish
        _stop(daemons)
        # a job step left anyway ignores SIGTERM without its controller: kill it by its PID
        steps = processes_with_env("SLURM_CONF", str(folder / "slurm.conf"))
        alive = kill_and_wait(steps)
        assert not alive, f"job steps of the test SLURM survive SIGKILL: {describe(alive)}"
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.mark.slow
def test_slurm_sweep_runs_three_jobs_as_an_array_and_collects(slurm, shards, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(REPO)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("OMP_NUM_THREADS", "1")):
        monkeypatch.setenv(name, value)
    sweep = tiny_sweep(shards, tmp_path, "slurm")
    sweep.slurm.cpus_per_task = 1
    sweep.slurm.time = 10
    records = submit(sweep, wait=True)
    ids = [r["job_id"] for r in records]
    assert len({i.split("_")[0] for i in ids}) == 1  # one array: <array id>_<task>
    assert all("error" not in r for r in records), records
    assert_three_finished(sweep)


def test_slurm_fit_fragment_combines_with_a_paper_stage_and_fsdp(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    printed = print_config([
        "fit", "--config", "configs/expert_sad.yaml", "--config", "configs/trainer/fsdp.yaml",
        "--config", "configs/sweeps/slurm_fit.yaml"], capsys)
    trainer = printed["trainer"]
    assert trainer["strategy"]["class_path"] == "moee.launch.fsdp.FSDP2Strategy"
    assert trainer["plugins"][0]["init_args"] == {"auto_requeue": True,
                                                  "requeue_signal": "SIGUSR1"}
    callbacks = [c["class_path"] for c in trainer["callbacks"]]
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in callbacks  # appended, not replaced
    assert "moee.launch.callbacks.ResumableCheckpoint" in callbacks
    assert printed["ckpt_path"] == "last"
