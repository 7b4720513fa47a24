"""Damaged data, reported once and in one place: shards against their manifest, and the samples
and shards a run skips.

* Before a run reads a split, :func:`size_check_line` compares each shard's size with the
  manifest (a ``stat`` per shard): one line names the damaged shards and the share of the
  samples they hold. ``python -m moee data verify DIR`` (:func:`main`) checks every sha256.
* While it runs, the loader stages (:func:`read_shards`, ``decode_and_sample``) hand each
  damaged shard (once per read, with the samples read before the damage) and each bad sample
  to the split's :class:`SkipLog`. Loader workers send their records to the training process
  through a queue; there the first problem of a shard that the size check did not already name
  is one warning line, the rest is counted.
* :class:`DataReport` (attached by ``MoEEDataModule.setup``) logs the counts of every epoch
  (``data/<split>_skipped_samples``, ``data/<split>_skipped_shards``) and ends the run with one
  summary line per split that skipped anything.
* With ``strict`` the first damaged shard or sample stops the run (:class:`DamagedDataError`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentParser

from moee.data.shards import (
    MANIFEST,
    ShardDamage,
    ShardError,
    check_shards,
    iter_tar_samples,
    read_manifest,
)
from moee.errors import MoEEError
from moee.utils import gather_objects, human_bytes

log = logging.getLogger(__name__)

VERIFY_COMMAND = "python -m moee data verify"
MAX_NAMED = 3
"""Damaged shards or samples named in one line; the rest are counted."""


class DamagedDataError(ShardError):
    """A damaged shard or sample met with ``strict`` data, or a stream that reads nothing.

    The message is one line, also when a DataLoader worker raised it (the loader re-raises it
    with the worker's traceback in the message: only the original line is kept).
    """

    def __init__(self, message: str) -> None:
        if message.startswith(f"Caught {type(self).__name__}"):
            last = [line for line in message.splitlines() if line.strip()][-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def _one_line(error: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class SkipRecord:
    """One skipped shard read or sample."""

    kind: str
    """``shard`` (the rest of a shard could not be read) or ``sample``."""
    url: str
    key: str
    reason: str
    read: int = 0
    """Shards: samples read from it before the damage."""
    expected: int | None = None
    """Shards: samples its manifest lists (``None``: no manifest)."""

    @property
    def name(self) -> str:
        """The shard's file name."""
        return os.path.basename(self.url.rstrip("/")) or self.url

    @property
    def lost(self) -> int:
        """Samples this record stands for: 1 for a sample; for a shard read, those after the
        damage (at least 1 when the manifest is unknown)."""
        if self.kind == "sample":
            return 1
        return max(1, self.expected - self.read) if self.expected is not None else 1

    def describe(self) -> str:
        """``shard-000001.tar: unexpected end of data (after 1 of 2 samples)``."""
        if self.kind == "sample":
            return f"sample {self.key!r} in {self.name}: {self.reason}"
        where = f"after {self.read} of {self.expected} samples" if self.expected is not None \
            else f"after {self.read} samples"
        return f"{self.name}: {self.reason} ({where})"


class SkipLog:
    """The damaged-data handler of one split: records skipped shard reads and samples.

    It is WebDataset's exception handler too (``handler(error) -> True``: continue). In a
    loader worker the records go to the training process through a queue (:meth:`connect`
    before the workers start, :meth:`drain` there); without workers they are kept directly.

    Args:
        what: the split, in messages (``train data``).
        strict: raise :class:`DamagedDataError` at the first record instead of skipping.
    """

    def __init__(self, what: str = "data", strict: bool = False) -> None:
        self.what = what
        self.strict = strict
        self.records: list[SkipRecord] = []
        self.known: set[str] = set()
        """Shard names already reported (by the size check): no warning line for them."""
        self.max_in_a_row: int | None = None
        """Failures in a row, without one good sample, that mean the stream reads nothing
        (set for endless, resampled streams, which would otherwise retry forever)."""
        self._warned: set[str] = set()
        self._queue: Any = None
        self._in_a_row = 0

    @property
    def count(self) -> int:
        """Records so far (in this process, after :meth:`drain`)."""
        return len(self.records)

    def connect(self) -> None:
        """Create the queue that loader workers send their records through (once)."""
        if self._queue is None:
            self._queue = multiprocessing.get_context().Queue()

    def drain(self, timeout: float = 0.0) -> list[SkipRecord]:
        """Take the records the workers have sent (waiting up to ``timeout`` seconds for one
        still in flight); return all records."""
        while self._queue is not None:
            try:
                self._add(self._queue.get(timeout=timeout) if timeout else
                          self._queue.get_nowait())
            except queue.Empty:
                break
        return self.records

    def __call__(self, error: Exception) -> bool:
        """WebDataset handler (a shard that cannot even be opened); True: carry on."""
        urls = [a for a in getattr(error, "args", ())[1:] if isinstance(a, str)]
        self.shard_failed(urls[-1] if urls else "?", error, read=0)
        return True

    def shard_failed(self, url: str, error: BaseException | str, read: int,
                     expected: int | None = None) -> None:
        """The rest of shard ``url`` cannot be read (``read`` samples came before)."""
        self._emit(SkipRecord("shard", url, "", _one_line(error), read, expected))

    def sample_failed(self, url: str, key: str, error: BaseException) -> None:
        """Sample ``key`` of shard ``url`` cannot be decoded."""
        self._emit(SkipRecord("sample", url, key, _one_line(error)))

    def sample_ok(self) -> None:
        """A sample was decoded: the stream still reads something."""
        self._in_a_row = 0

    def _emit(self, record: SkipRecord) -> None:
        if torch.utils.data.get_worker_info() is not None and self._queue is not None:
            self._queue.put(record)
        else:
            self._add(record)
        if self.strict:
            raise DamagedDataError(f"{self.what}: {record.describe()}; stopped because "
                                   "data.init_args.strict is true")
        self._in_a_row += 1
        if self.max_in_a_row is not None and self._in_a_row >= self.max_in_a_row:
            raise DamagedDataError(
                f"{self.what}: {self._in_a_row} shard reads and samples in a row failed, the "
                f"last {record.describe()}: nothing readable is left ({VERIFY_COMMAND})")

    def _add(self, record: SkipRecord) -> None:
        self.records.append(record)
        if record.name in self.known or record.name in self._warned:
            log.debug("skipped %s: %s", self.what, record.describe())
            return
        self._warned.add(record.name)
        log.warning("%s: skipping %s (further problems of %s are counted and summarised at "
                    "the end)", self.what, record.describe(), record.name)

    def gathered(self) -> list[SkipRecord]:
        """Every process's records, at the end of a run (a collective under DDP: call it on
        every rank)."""
        return [r for records in gather_objects(self.drain(timeout=0.1)) for r in records]

    def __getstate__(self) -> dict[str, Any]:
        # a worker gets the queue and settings, not the records of the main process
        return {**self.__dict__, "records": [], "_warned": set()}


    def skipped_rows(self) -> list[dict[str, Any]]:
        """One row per damaged shard or bad sample of :meth:`gathered` (for a report CSV):
        ``shard``, ``key``, ``count`` (the samples it stands for) and ``reason``."""
        rows = {}
        for record in self.gathered():
            rows.setdefault((record.url, record.key), {
                "shard": record.url, "key": record.key, "count": record.lost,
                "reason": record.reason if record.kind == "sample"
                else record.describe().split(": ", 1)[1]})
        return list(rows.values())


def read_shards(src: Iterable[dict[str, Any]], handler: SkipLog,
                expected: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
    """Pipeline stage: opened shard streams (``{"url", "stream"}``) → raw samples grouped by
    key. A shard that breaks off, or ends before the samples its manifest lists, is one record
    (with the samples read before) and the stream goes on with the next shard."""
    expected = expected or {}
    for source in src:
        url, stream = source["url"], source["stream"]
        read = 0
        try:
            for sample in iter_tar_samples(stream, url):
                read += 1
                yield sample
            stream.close()
        except Exception as error:  # any damage: tar, gzip, I/O, a failing pipe
            handler.shard_failed(url, error, read, expected.get(url))
            with contextlib.suppress(Exception):
                stream.close()
            continue
        if url in expected and read < expected[url]:
            handler.shard_failed(url, "ends early", read, expected[url])


def manifest_folders(source: Any) -> list[str]:
    """The shard folders with a manifest among a shard source (a path or a list of them)."""
    items = source if isinstance(source, (list, tuple)) else [source]
    return [str(item) for item in items if item is not None
            and os.path.isfile(os.path.join(str(item), MANIFEST))]


def manifest_counts(source: Any) -> dict[str, int]:
    """{shard path, as the loader names it: samples} of the manifest folders of a source."""
    return {str(Path(folder) / shard["name"]): shard["samples"]
            for folder in manifest_folders(source) for shard in read_manifest(folder)["shards"]}


def _named(items: list[str], total: int | None = None) -> str:
    shown = "; ".join(items[:MAX_NAMED])
    more = (total if total is not None else len(items)) - min(len(items), MAX_NAMED)
    return f"{shown}; and {more} more" if more > 0 else shown


def damage_line(what: str, folder: str, damaged: list[ShardDamage]) -> str:
    """One line: which shards of ``folder`` are damaged and the share of samples they hold."""
    manifest = read_manifest(folder)
    held = sum(d.samples for d in damaged)
    total = manifest["samples"]
    share = f"{100 * held / total:.0f}%" if total else "-"
    names = _named([f"{d.name} {d.problem}" for d in damaged])
    return (f"{what}: {len(damaged)} of {len(manifest['shards'])} shards in {folder} are "
            f"damaged ({names}); they hold {held} of {total} samples ({share})")


def size_check(what: str, folder: str, strict: bool = False) -> list[ShardDamage]:
    """Compare the shard sizes of ``folder`` with its manifest; warn in one line (raise
    :class:`DamagedDataError` with ``strict``) when some differ. Returns the damaged shards."""
    damaged = check_shards(folder)
    if not damaged:
        return damaged
    line = damage_line(what, folder, damaged)
    if strict:
        raise DamagedDataError(f"{line}; stopped because data.init_args.strict is true")
    log.warning("%s; the run reads what is left (full check: %s %s; stop instead: "
                "data.init_args.strict true)", line, VERIFY_COMMAND, folder)
    return damaged


def summary_line(what: str, records: list[SkipRecord], epochs: int | None = None) -> str:
    """One line of what a split skipped over a run (empty when nothing)."""
    if not records:
        return ""
    shards = [r for r in records if r.kind == "shard"]
    samples = [r for r in records if r.kind == "sample"]
    first: dict[tuple[str, str], SkipRecord] = {}
    for record in records:
        first.setdefault((record.url, record.key), record)
    damaged = [r for r in first.values() if r.kind == "shard"]
    bad = [r for r in first.values() if r.kind == "sample"]
    span = f" in {epochs} epoch(s)" if epochs else ""
    parts = []
    if shards:
        parts.append(f"{len(shards)} read(s) of {len(damaged)} damaged shard(s)")
    if samples:
        parts.append(f"{len(samples)} read(s) of {len(bad)} bad sample(s)")
    names = _named([r.describe() for r in [*damaged, *bad]])
    return f"{what}: skipped {' and '.join(parts)}{span} — {names}"


class DataReport(L.Callback):
    """Counts of skipped data per epoch in the logger, and one summary line per split at the
    end of ``fit``, ``validate`` and ``test``; ``MoEEDataModule.setup`` attaches it.
    ``skipped`` (every rank's records, after the run) is what the CLI's exit status reads."""

    def __init__(self, skips: dict[str, SkipLog]) -> None:
        self.skips = skips
        self.logged = dict.fromkeys(skips, 0)
        self.epochs = 0
        self.skipped = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Count the training epochs, for the summary."""
        self.epochs += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Take the workers' records as they come (their warnings appear in order)."""
        self.skips["train"].drain()

    def _log_epoch(self, pl_module: L.LightningModule, split: str) -> None:
        records = self.skips[split].drain()
        new = records[self.logged[split]:]
        self.logged[split] = len(records)
        for kind in ("sample", "shard"):
            count = float(sum(r.kind == kind for r in new))
            pl_module.log(f"data/{split}_skipped_{kind}s", count, reduce_fx="sum",
                          sync_dist=True, on_epoch=True, batch_size=1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Log the epoch's skipped training samples and shard reads."""
        self._log_epoch(pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        """Log the validation pass's skipped samples and shard reads."""
        if not trainer.sanity_checking:
            self._log_epoch(pl_module, "val")

    def _summarise(self, trainer: L.Trainer, splits: tuple[str, ...]) -> None:
        """One line per split that skipped anything (rank 0); ``skipped`` counts every rank's
        records (a collective: every rank calls it)."""
        for split in splits:
            skips = self.skips[split]
            records = skips.gathered()
            self.skipped += len(records)
            line = summary_line(skips.what, records, self.epochs if split == "train" else None)
            if line and trainer.is_global_zero:
                logged = " (logged as data/*_skipped_*)" if trainer.loggers and split != "test" \
                    else ""
                log.warning("%s%s", line, logged)

    STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """At the end of ``fit``, ``validate`` or ``test`` (after the progress bar has gone):
        the data its splits skipped."""
        self._summarise(trainer, self.STAGE_SPLITS.get(stage, ()))


def verify(folders: list[str], checksums: bool = True) -> int:
    """Check shard folders against their manifests and print what differs; returns the number
    of damaged shards."""
    total_damaged = 0
    for folder in folders:
        manifest = read_manifest(folder)
        damaged = check_shards(folder, checksums=checksums)
        for damage in damaged:
            print(f"{damage.path}: {damage.problem} ({damage.samples} samples)")
        total_damaged += len(damaged)
        size = sum(s["bytes"] for s in manifest["shards"])
        check = "sha256 and size" if checksums else "size"
        if damaged:
            print(damage_line("data verify", folder, damaged))
        else:
            print(f"{folder}: all {len(manifest['shards'])} shards match the manifest ({check}; "
                  f"{manifest['samples']} samples, {human_bytes(size)})")
    return total_damaged


def build_parser() -> ArgumentParser:
    """``python -m moee data``: its one action, ``verify``."""
    parser = ArgumentParser(prog="python -m moee data", description="Tools for shard folders.")
    verify_parser = ArgumentParser(description="Check shard folders against their "
                                               "manifest.json: every shard present, of its size "
                                               "and its sha256; exit status 1 if one is not.")
    verify_parser.add_argument("folders", nargs="+", help="shard folders (with a manifest.json)")
    verify_parser.add_argument("--sizes_only", type=bool, default=False,
                               help="compare sizes only (fast: no shard is read)")
    actions = parser.add_subcommands(dest="action")
    actions.add_subcommand("verify", verify_parser, help="check shards against their manifest")
    return parser


def main(argv: list[str]) -> None:
    """``python -m moee data verify DIR [DIR ...] [--sizes_only true]``: exit 1 if damaged."""
    options = build_parser().parse_args(argv).verify
    try:
        damaged = verify([str(Path(f)) for f in options.folders], not options.sizes_only)
    except MoEEError as error:
        sys.exit(f"error: {error}")
    if damaged:
        sys.exit(1)
