"""``python -m moee prepare``: folders of real talking videos → MoEE shards.

For every input video: decode (streamed, resampled to 25 fps), cut into clips of at most
``max_seconds``, load the audio (inside the video or a side file, any rate → 16 kHz mono),
detect the face on every ``detect_every``-th frame and crop one stable square per clip,
track MediaPipe face-mesh landmarks (→ iBUG-68), estimate AUs (pluggable), describe the
emotion in text, and write the clip. Identities are processed as units so that masked noisy
emotion sampling gets references of the same person in other emotions (``mnsref.npy``,
``mnslmk.npy``, ``meta.extra["mns_emotions"]``).

Bad inputs (unreadable video, no face, several faces, missing or silent audio, too short,
unknown emotion, ...) are skipped with a counted reason; nothing crashes the run and no half
shard is ever visible. Each identity keeps a journal (``.journal/<identity>.jsonl``) of the
shards it finished and the videos it skipped, so a rerun redoes only what is missing.
Identities run in parallel worker processes (``workers``) with a progress bar; the run ends
with a summary and the folder's ``manifest.json``. Layouts: see ``data/*.md``.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from moee.data.prepare.identities import Report, process_identity
from moee.data.prepare.layouts import Layout, SourceVideo, discover
from moee.data.prepare.process import PrepareConfig, VideoProcessor
from moee.data.shards import ShardInfo, write_manifest

_worker: dict = {}


def _init_worker(config: PrepareConfig, output: Path, progress_queue) -> None:
    logging.basicConfig(level=logging.WARNING)
    _worker.update(processor=VideoProcessor(config), config=config, output=output,
                   queue=progress_queue)


def _run_identity(job: tuple[str, list[SourceVideo]]) -> Report:
    identity, sources = job
    return process_identity(identity, sources, _worker["output"], _worker["config"],
                            _worker["processor"], lambda: _worker["queue"].put(1))


def prepare_dataset(input: Path, output: Path, layout: Layout = "mead", csv: Path | None = None,
                    identities: list[str] | None = None, workers: int = 1,
                    config: PrepareConfig | None = None, progress_bar: bool = True) -> Report:
    """Prepare a data set folder into a shard folder; returns the run's counts."""
    config = config or PrepareConfig()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    sources = discover(Path(input), layout, csv)
    by_identity: dict[str, list[SourceVideo]] = {}
    for source in sources:
        if identities is None or source.identity in identities:
            by_identity.setdefault(source.identity, []).append(source)
    jobs = sorted(by_identity.items())
    total = Report()
    bar = tqdm(total=sum(len(s) for _, s in jobs), unit="video", disable=not progress_bar)
    if workers <= 1 or len(jobs) <= 1:
        processor = VideoProcessor(config)
        for identity, group in jobs:
            total.add(process_identity(identity, group, output, config, processor,
                                       lambda: bar.update()))
    else:
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager:
            updates = manager.Queue()
            with context.Pool(min(workers, len(jobs)), _init_worker,
                              (config, output, updates)) as pool:
                pending = pool.map_async(_run_identity, jobs)
                while not pending.ready() or not updates.empty():
                    try:
                        bar.update(updates.get(timeout=0.2))
                    except queue.Empty:
                        pass
                for report in pending.get():
                    total.add(report)
    bar.close()
    write_manifest(output, [ShardInfo(**info) for info in total.shards],
                   layout=layout, prepare=asdict(config))
    return total


def prepare(
    input: Path,
    output: Path,
    layout: Layout = "mead",
    csv: Path | None = None,
    identities: list[str] | None = None,
    workers: int = 1,
    clips: PrepareConfig = PrepareConfig(),
) -> None:
    """Turn a folder of talking-face videos into MoEE shards (resumable: rerun to continue).

    Args:
        input: the data set folder.
        output: the shard folder (created; shards, manifest.json and .journal/ go here).
        layout: folder layout: mead, hdtf, dh-faceemovid, or csv (see data/*.md).
        csv: a CSV ``path,identity,emotion,intensity[,text]`` listing the videos (any layout).
        identities: prepare only these people.
        workers: parallel processes (one identity at a time each).
        clips: how clips are cut, cropped, annotated and written (:class:`PrepareConfig`;
            ``--clips.size 256 --clips.max_seconds 5 --clips.split val``).
    """
    report = prepare_dataset(input, output, layout, csv, identities, workers, clips)
    print(report.summary())


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m moee prepare``."""
    from jsonargparse import auto_cli

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    auto_cli(prepare, args=argv, prog="python -m moee prepare")


if __name__ == "__main__":
    main()
