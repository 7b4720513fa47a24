"""Processes that tests start, found and ended by PID: nothing a test starts may outlive it.

A test's processes are marked by an environment variable (``MOEE_TEST_TOKEN``, unique per test)
that every process started with the test's environment inherits — subprocesses, their
children, SLURM daemons and the job steps they start — so they can be found in ``/proc`` even
when they left the test's process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

TOKEN_VARIABLE = "MOEE_TEST_TOKEN"


def new_token() -> str:
    """A fresh value for :data:`TOKEN_VARIABLE`."""
    return uuid.uuid4().hex


def processes_with_env(name: str, value: str) -> list[int]:
    """PIDs of the live processes (other than this one) started with ``name=value`` in their
    environment; zombies and processes that cannot be read are left out."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environment:
            found.append(int(entry.name))
    return found


def describe(pids: list[int]) -> str:
    """``"1234 slurmstepd: [1.0], 1240 srun ..."`` for a message."""
    names = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            command = "?"
        names.append(f"{pid} {command.strip()[:80]}")
    return ", ".join(names)


def kill_and_wait(pids: list[int], timeout: float = 10.0) -> list[int]:
    """SIGKILL each PID (job steps ignore SIGTERM once their controller is gone) and wait for
    them to end; returns those still alive after ``timeout``."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        time.sleep(0.05)
    return alive


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; its parent reaps it


def kill_group(leader: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL every process of the process group ``leader`` leads, reap ``leader``, and wait
    until no other member of the group is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ProcessLookupError, PermissionError):
        while time.monotonic() < deadline:
            os.killpg(leader.pid, 0)  # ProcessLookupError once the group is empty
            time.sleep(0.02)


def run_to_end(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` (output captured as text) in a session of its own, whose every
    process is killed when the command ends or times out: Lightning's DDP launcher starts the
    other ranks as children, and a child left behind must not outlive the test. Output goes
    through files, so a leftover child holding the pipes cannot keep this waiting."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, start_new_session=True, stdout=stdout,
                                   stderr=stderr, text=True, **kwargs)
        try:
            process.wait(timeout=timeout)
        finally:
            kill_group(process)
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(command, process.returncode, stdout.read(),
                                           stderr.read())
