"""What a batch run did, in one line and one CSV: ``moee predict``, ``moee test`` and
``sweep collect``.

Every batch ends with ``N of M <items> <done>, K skipped`` and, when K > 0, a CSV of the
skipped items with their reasons next to the outputs (a stale one from an earlier run is
removed). The CLI's exit status is non-zero when K > 0, unless ``--allow_skips`` is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moee.utils import csv_text, write_text

SKIPPED_JOBS = "skipped_jobs.csv"
ALLOW_SKIPS = "--allow_skips"


@dataclass
class BatchReport:
    """The outcome of a batch.

    Attributes:
        noun: what the items are (``jobs``, ``test clips``).
        verb: what happened to the good ones (``written``, ``scored``, ``collected``).
        done: items that succeeded.
        skipped: one row per skipped item (or group of items: a ``count`` column), ending
            with its ``reason``.
    """

    noun: str
    verb: str
    done: int
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def skipped_count(self) -> int:
        """Items skipped (a row with a ``count`` stands for that many)."""
        return sum(int(row.get("count", 1)) for row in self.skipped)

    @property
    def total(self) -> int:
        """Items the batch had."""
        return self.done + self.skipped_count

    def line(self, csv_path: str | os.PathLike | None = None) -> str:
        """``2 of 4 jobs written, 2 skipped (reasons: out/skipped_jobs.csv)``."""
        text = f"{self.done} of {self.total} {self.noun} {self.verb}, {self.skipped_count} skipped"
        return f"{text} (reasons: {csv_path})" if csv_path is not None and self.skipped else text

    def write_csv(self, path: str | os.PathLike) -> Path | None:
        """Write the skipped rows (atomically); without any, remove a stale file. Returns the
        path written, or ``None``."""
        path = Path(path)
        if not self.skipped:
            path.unlink(missing_ok=True)
            return None
        columns = [c for c in dict.fromkeys(k for row in self.skipped for k in row)
                   if c != "reason"] + ["reason"]
        write_text(path, csv_text(columns, [[row.get(c, "") for c in columns]
                                            for row in self.skipped]))
        return path

    def finish(self, csv_path: str | os.PathLike) -> str:
        """Write the CSV, print the line (standard output) and return it."""
        written = self.write_csv(csv_path)
        text = self.line(written)
        print(text, flush=True)
        return text


def exit_line(skipped: int, what: str) -> str:
    """The CLI's last line when a run skipped something and ``--allow_skips`` is not given."""
    return (f"error: {skipped} {what} skipped (see the line above); exit status 1 "
            f"({ALLOW_SKIPS} accepts skips)")
