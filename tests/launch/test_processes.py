"""The process bookkeeping of the launch tests: a process that escapes its test is found by its
mark and killed; a command's children end with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.processes import (
    TOKEN_VARIABLE,
    kill_and_wait,
    processes_with_env,
    run_to_end,
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def found_within(seconds: float, token: str) -> list[int]:
    """The marked processes, polled for up to ``seconds``: Popen returns when the child's exec
    closes its close-on-exec pipe, a moment before the kernel maps the new environment, and on a
    loaded machine /proc/PID/environ can still read empty then."""
    deadline = time.monotonic() + seconds
    while not (found := processes_with_env(TOKEN_VARIABLE, token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_a_process_that_left_the_test_session_is_found_by_its_mark_and_killed():
    token = os.environ[TOKEN_VARIABLE]  # set for this test by the autouse fixture
    escaped = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert found_within(5, token) == [escaped.pid]
        assert kill_and_wait([escaped.pid]) == []
    finally:
        escaped.kill()
        escaped.wait()
    assert processes_with_env(TOKEN_VARIABLE, token) == []


def test_run_to_end_ends_the_children_a_command_leaves_behind():
    result = run_to_end([sys.executable, "-c", "import subprocess; "
                         "print(subprocess.Popen(['sleep', '60']).pid)"], timeout=60)
    orphan = int(result.stdout)
    assert result.returncode == 0
    assert not processes_with_env(TOKEN_VARIABLE, os.environ[TOKEN_VARIABLE])
    assert not alive(orphan) or open(f"/proc/{orphan}/stat").read().split()[2] == "Z"
