"""One identity at a time → shards: masked-noisy-emotion references from the person's other
videos, and a journal of finished shards and skipped videos, so a rerun redoes only what is
missing."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from moee.data.prepare.layouts import SourceVideo
from moee.data.prepare.process import PrepareConfig, Skip, VideoProcessor
from moee.data.sampling import MNS_LANDMARKS, MNS_REFERENCE
from moee.data.shards import Clip, ShardWriter

log = logging.getLogger(__name__)


JOURNAL = ".journal"


@dataclass
class Report:
    """Counts of one identity or of a whole run."""

    videos: int = 0
    done_before: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    shards: list[dict] = field(default_factory=list)

    def add(self, other: Report) -> None:
        """Accumulate another report into this one."""
        self.videos += other.videos
        self.done_before += other.done_before
        self.kept += other.kept
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)
        self.shards += other.shards

    def summary(self) -> str:
        """A few lines for the end of a run."""
        lines = [f"videos: {self.videos} ({self.done_before} done in an earlier run)",
                 f"clips kept: {self.kept} in {len(self.shards)} shards"]
        lines += [f"skipped ({reason}): {n}" for reason, n in sorted(self.skipped.items())]
        lines += [f"note ({note}): {n}" for note, n in sorted(self.notes.items())]
        return "\n".join(lines)


def safe_name(identity: str) -> str:
    """A file-name-safe form of an identity (shard prefix and journal name)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", identity)


class Journal:
    """Append-only record of one identity's finished shards and skipped videos.

    One JSON object per line, appended and flushed after each event; a line torn by a crash
    is ignored on reading.
    """

    def __init__(self, output: Path, identity: str):
        self.path = output / JOURNAL / f"{safe_name(identity)}.jsonl"
        self.entries: list[dict] = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.entries.append(json.loads(line))
                except ValueError:
                    break

    def append(self, entry: dict) -> None:
        """Record one event durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries.append(entry)

    @property
    def shards(self) -> list[dict]:
        """Finished shard records: ``{"shard": ShardInfo dict, "sources": [...]}``."""
        return [e for e in self.entries if "shard" in e]

    @property
    def done(self) -> set[str]:
        """Names of the videos fully handled (written or skipped)."""
        names = {e["source"] for e in self.entries if "source" in e}
        return names.union(*(e["sources"] for e in self.shards))


def _pool_refs(sources: list[SourceVideo], process: VideoProcessor,
               count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Reference frames of one identity: ``count`` frames of the first usable video of each
    emotion, as (emotion, frame, landmarks)."""
    refs = []
    by_emotion: dict[str, list[SourceVideo]] = {}
    for source in sources:
        by_emotion.setdefault(source.emotion, []).append(source)
    if len(by_emotion) < 2:
        return refs
    for emotion_sources in by_emotion.values():
        for source in emotion_sources[:3]:
            try:
                clips = process(source).clips
            except Skip:
                continue
            if clips:
                clip = clips[0]
                picks = np.linspace(0, len(clip.frames) - 1, count).round().astype(int)
                refs += [(clip.meta.emotion, clip.frames[i], clip.landmarks[i]) for i in picks]
                break
    return refs


def _attach_mns(clip: Clip, refs: list, count: int) -> None:
    others = [r for r in refs if r[0] != clip.meta.emotion]
    if not others or not count:
        return
    rng = np.random.default_rng(list(clip.key.encode()))
    picks = rng.choice(len(others), size=min(count, len(others)), replace=False)
    clip.extras[MNS_REFERENCE] = np.stack([others[i][1] for i in picks])
    clip.extras[MNS_LANDMARKS] = np.stack([others[i][2] for i in picks]).astype(np.float16)
    clip.meta.extra["mns_emotions"] = [others[i][0] for i in picks]


def process_identity(identity: str, sources: list[SourceVideo], output: Path,
                     config: PrepareConfig, processor: VideoProcessor,
                     progress: Callable[[], None] = lambda: None) -> Report:
    """Prepare all videos of one person that earlier runs have not finished."""
    report = Report(videos=len(sources))
    journal = Journal(output, identity)
    prefix = safe_name(identity)
    todo = [s for s in sources if s.name not in journal.done]
    report.done_before = len(sources) - len(todo)
    for _ in range(report.done_before):
        progress()
    kept = {r["shard"]["name"] for r in journal.shards}
    for stale in output.glob(f".{prefix}-*.tar.*.tmp"):  # temporaries of a killed run
        stale.unlink()
    for orphan in output.glob(f"{prefix}-[0-9]*.tar"):
        if orphan.name not in kept:  # renamed but not journaled before a crash: redone below
            orphan.unlink()
    if todo:
        refs = _pool_refs(sources, processor, config.mns_refs) if config.mns_refs else []
        index = len(journal.shards)
        writer, in_shard, count = None, [], 0
        for source in todo:
            try:
                outcome = processor(source)
            except Skip as skip:
                report.skipped[skip.reason] += 1
                log.info("skipping %s: %s", source.video, skip)
                journal.append({"source": source.name, "skipped": skip.reason})
                progress()
                continue
            report.skipped.update(outcome.skipped)
            report.notes.update(outcome.notes)
            if not outcome.clips:
                journal.append({"source": source.name, "skipped": "no usable clip"})
                progress()
                continue
            if writer is None:
                writer = ShardWriter(output, prefix=prefix, max_samples=1 << 30,
                                     start_index=index, crf=config.crf)
            for clip in outcome.clips:
                _attach_mns(clip, refs, config.mns_refs)
                writer.write(clip)
            report.kept += len(outcome.clips)
            in_shard.append(source.name)
            count += len(outcome.clips)
            if count >= config.shard_size:
                _finish_shard(writer, journal, in_shard)
                writer, in_shard, count, index = None, [], 0, index + 1
            progress()
        if writer is not None:
            _finish_shard(writer, journal, in_shard)
    report.shards = [r["shard"] for r in journal.shards]
    return report


def _finish_shard(writer: ShardWriter, journal: Journal, sources: list[str]) -> None:
    (info,) = writer.close()
    journal.append({"shard": asdict(info), "sources": sources})
