"""Small helpers shared across the package: atomic writes with one-line errors, gathering."""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import io
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from moee.errors import MoEEError

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
"""Errors of the storage, not of the program: a full disk or quota, a failing device."""

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


class WriteError(MoEEError, OSError):
    """A file that could not be written (disk full, I/O error); the message is one line that
    names the path and the free space. The previous file under that name is unchanged."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def write_errno(error: BaseException) -> int | None:
    """The storage errno behind ``error`` (also when a library wraps it, as ``torch.save``
    and safetensors do), or ``None`` when it is not a storage error."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            return error.errno
        found = re.search(r"os error (\d+)|\[Errno (\d+)\]", str(error))
        code = int(found[1] or found[2]) if found else None
        if code in WRITE_ERRNOS:
            return code
        error = error.__cause__ or error.__context__
    return None


def human_bytes(size: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def free_space(path: str | os.PathLike) -> str:
    """``"1.2 GiB free in /data"`` for the folder of the file ``path`` (or its nearest existing
    parent)."""
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{human_bytes(shutil.disk_usage(folder).free)} free in {folder}"
    except OSError:
        return f"free space of {folder} unknown"


def write_error(code: int, path: str | os.PathLike) -> WriteError:
    """The one-line :class:`WriteError` of a failed write of ``path``."""
    return WriteError(code, f"cannot write {os.fspath(path)}: {os.strerror(code)} "
                            f"({free_space(path)}); the previous file, if any, is unchanged")


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.{_HOST}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temps(final: str | os.PathLike) -> list[Path]:
    """Clean up after processes of this host that were killed while replacing ``final``.

    A SIGKILL leaves its temporary behind: the next write of the same path removes it. A
    folder moved aside (``.old``) while being replaced is put back if ``final`` is missing.
    """
    final = Path(final)
    prefix = _temp_prefix(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for candidate in sorted(final.parent.glob(f"{glob.escape(prefix)}*")):
        pid = candidate.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if candidate.suffix == ".old" and not final.exists():
            os.replace(candidate, final)
        elif candidate.suffix in (".tmp", ".old"):
            _remove(candidate)
            removed.append(candidate)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def new_temp(final: str | os.PathLike, directory: bool = False, suffix: str = ".tmp") -> Path:
    """A new temporary file (or folder) beside ``final`` (its folder is created), named after
    it, this host and this process (after removing those of killed processes:
    :func:`remove_stale_temps`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    prefix = f"{_temp_prefix(final)}{os.getpid()}-"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=final.parent))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=final.parent)
    os.close(fd)
    return Path(tmp)


def umask_mode(directory: bool = False) -> int:
    """The permissions a new file (or folder) gets under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def replace(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move ``tmp`` onto ``final`` with the permissions of a new file under the umask (a
    temporary is 0600, or 0700, and so may be the file a library wrote over it); a folder
    replaces a folder (the old one is moved aside first and removed after)."""
    tmp, final = Path(tmp), Path(final)
    os.chmod(tmp, umask_mode(tmp.is_dir()))
    if not tmp.is_dir() or not final.exists():
        os.replace(tmp, final)
        return
    old = new_temp(final, directory=True, suffix=".old")
    os.rmdir(old)
    os.replace(final, old)
    os.replace(tmp, final)
    _remove(old)


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike,
                   cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn a storage error raised in the block (full disk, I/O error) into the one-line
    :class:`WriteError` of ``path``; other errors pass unchanged. ``cleanup`` runs first on
    any error (so the free space reported is that left once the partial write is gone)."""
    try:
        yield
    except BaseException as error:
        if cleanup is not None:
            cleanup()
        code = None if isinstance(error, WriteError) else write_errno(error)
        if code is None:
            raise
        raise write_error(code, path) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary file (or, with ``directory``, folder) beside ``path``; it replaces
    ``path`` only when the block succeeds.

    Whatever fails — an exception, a full disk, a failing device — the previous ``path`` is
    intact and the temporary is removed; a storage error becomes one-line :class:`WriteError`
    naming the path and the free space. Temporaries left by killed processes are removed by
    the next write of the same path (:func:`remove_stale_temps`).
    """
    final = Path(path)
    tmp: Path | None = None

    def remove_temp() -> None:
        if tmp is not None and (tmp.exists() or tmp.is_symlink()):
            _remove(tmp)

    with storage_errors(final, cleanup=remove_temp):
        tmp = new_temp(final, directory)
        yield tmp
        replace(tmp, final)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def csv_text(columns: list[str], rows: list[list[Any]]) -> str:
    """CSV text of a header and rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (indented, UTF-8)."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every process of the default process group (``[obj]`` without one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
