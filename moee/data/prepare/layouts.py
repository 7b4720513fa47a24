"""The data set layouts ``prepare`` reads (MEAD, HDTF, DH-FaceEmoVid-150, a CSV list):
each discovers :class:`SourceVideo` entries (video, audio, identity, emotion, intensity)."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from moee.emotions import NEUTRAL

Layout = Literal["mead", "hdtf", "dh-faceemovid", "csv"]
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
AUDIO_SUFFIXES = (".m4a", ".wav", ".mp3", ".aac", ".flac")


@dataclass
class SourceVideo:
    """One input video and its labels (from the folder layout or the CSV)."""

    video: str
    identity: str
    name: str
    emotion: str = NEUTRAL
    intensity: float = 1.0
    text: str = ""
    audio: str | None = None
    labelled: bool = True


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)


def _level(part: str) -> float | None:
    match = re.fullmatch(r"level_?(\d+)", part)
    return min(int(match.group(1)), 3) / 3 if match else None


def discover_mead(root: Path) -> list[SourceVideo]:
    """MEAD: ``<id>/video/front/<emotion>/level_<n>/<clip>.mp4``; audio in the video or in
    ``<id>/audio/<emotion>/level_<n>/<clip>.m4a``; intensity ``n / 3``."""
    found = []
    for video in _videos(root):
        parts = video.relative_to(root).parts
        if len(parts) != 6 or parts[1:3] != ("video", "front"):
            continue
        identity, emotion, level = parts[0], parts[3], parts[4]
        audio_dir = root / identity / "audio" / emotion / level
        audio = next((str(audio_dir / (video.stem + s)) for s in AUDIO_SUFFIXES
                      if (audio_dir / (video.stem + s)).is_file()), None)
        found.append(SourceVideo(
            video=str(video), identity=identity, name=f"{emotion}-{level}-{video.stem}",
            emotion=emotion, intensity=_level(level) or 1.0, audio=audio))
    return found


def discover_hdtf(root: Path) -> list[SourceVideo]:
    """HDTF: ``<name>_<nn>.mp4`` anywhere below ``root``; identity ``<name>``, no emotion
    label (stored as neutral with ``label_source = "none"``)."""
    return [
        SourceVideo(video=str(v), identity=re.sub(r"_\d+$", "", v.stem), name=v.stem,
                    emotion=NEUTRAL, intensity=0.0, labelled=False)
        for v in _videos(root)
    ]


def discover_dh_faceemovid(root: Path) -> list[SourceVideo]:
    """DH-FaceEmoVid-150: ``<id>/<emotion>[/level_<n>]/<clip>.mp4``; emotion folders may name
    compounds with underscores (``sadly_surprised``)."""
    found = []
    for video in _videos(root):
        parts = video.relative_to(root).parts
        if len(parts) not in (3, 4):
            continue
        level = _level(parts[2]) if len(parts) == 4 else None
        if len(parts) == 4 and level is None:
            continue
        found.append(SourceVideo(
            video=str(video), identity=parts[0],
            name="-".join((*parts[1:-1], video.stem)), emotion=parts[1].replace("_", " "),
            intensity=1.0 if level is None else level))
    return found


def read_csv_list(path: Path) -> list[SourceVideo]:
    """A CSV with a header ``path,identity,emotion,intensity[,text]``; paths relative to it.

    An empty emotion means unlabelled (neutral, ``label_source = "none"``)."""
    found = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            video = (path.parent / row["path"]).resolve()
            emotion = (row.get("emotion") or "").strip()
            found.append(SourceVideo(
                video=str(video), identity=row["identity"].strip(),
                name=Path(row["path"]).with_suffix("").as_posix().replace("/", "-"),
                emotion=emotion or NEUTRAL, intensity=float(row.get("intensity") or 1.0),
                text=(row.get("text") or "").strip(), labelled=bool(emotion)))
    return found


def discover(root: Path, layout: Layout, csv_path: Path | None = None) -> list[SourceVideo]:
    """All input videos of a data set folder in the given layout."""
    if layout == "csv" or csv_path is not None:
        if csv_path is None:
            raise ValueError("layout 'csv' needs --csv PATH")
        return read_csv_list(Path(csv_path))
    finders: dict[str, Callable[[Path], list[SourceVideo]]] = {
        "mead": discover_mead, "hdtf": discover_hdtf, "dh-faceemovid": discover_dh_faceemovid,
    }
    if layout not in finders:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(finders)}, csv")
    return finders[layout](Path(root))
