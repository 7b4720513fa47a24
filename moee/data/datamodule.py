"""``MoEEDataModule``: WebDataset shards streamed into training batches for every stage.

Shard sources (train, val, test) may each be a shard folder with a ``manifest.json``, a single
``.tar``, a brace pattern (``/data/mead/shard-{000000..000127}.tar``), a ``pipe:`` command or a
URL understood by WebDataset (``pipe:aws s3 cp s3://bucket/shard-000001.tar -``), or a list
of any of these. The training stream resamples shards endlessly (``resampled``) and is cut
into epochs of ``samples_per_epoch``; DDP ranks and loader workers read disjoint shards
(``split_by_rank`` then ``split_by_worker``) when not resampling, and independently seeded
random shards when resampling. Clips pass the emotion / identity / intensity filter on their
``json`` alone, before any video is decoded. Damaged data is checked against the manifest
before a split is read, skipped and counted while it is read, and summarised at the end
(:mod:`moee.data.health`); ``strict`` stops at the first damaged shard or sample instead.
Loader batches carry uint8 images, normalised on the device by ``on_after_batch_transfer``.
See :mod:`moee.data.batch` for the batch layout and :mod:`moee.data.sampling` for windows,
MNS and jitter.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import math
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import webdataset as wds

from moee.data.batch import collate, normalize_images
from moee.data.health import (
    DataReport,
    SkipLog,
    manifest_counts,
    manifest_folders,
    read_shards,
    size_check,
)
from moee.data.media import MediaError
from moee.data.sampling import ClipSampler, SamplingOptions
from moee.data.shards import (
    MANIFEST,
    Clip,
    ShardError,
    decode_clip,
    read_manifest,
    shard_urls,
)
from moee.emotions import canonical_emotion_name

log = logging.getLogger(__name__)

ShardSource = str | list[str]
MAX_FAILURES_IN_A_ROW = 1000
"""Failed shard reads and samples in a row after which the training stream (endless: resampled,
or repeated until the epoch is full) stops: it has nothing readable left."""


def resolve_shards(source: ShardSource) -> list[str]:
    """Expand a shard source (see the module docstring) into a list of shard URLs."""
    if isinstance(source, (list, tuple)):
        return [url for item in source for url in resolve_shards(item)]
    source = str(source)
    if source.startswith("pipe:") or "://" in source:
        return list(wds.shardlists.expand_urls(source))
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, MANIFEST)):
            return shard_urls(source)
        urls = sorted(glob.glob(os.path.join(source, "*.tar")))
        if not urls:
            raise ShardError(f"no manifest and no .tar shards in {source!r}")
        return urls
    urls = list(wds.shardlists.expand_urls(source))
    missing = [url for url in urls if not os.path.exists(url)]
    if missing:
        raise ShardError(f"{len(missing)} shard(s) of {source!r} do not exist, e.g. {missing[0]!r}")
    return urls


def manifest_samples(source: ShardSource) -> int | None:
    """Total samples of a source made of manifest folders, or ``None`` when unknown."""
    sources = source if isinstance(source, (list, tuple)) else [source]
    if not all(os.path.isfile(os.path.join(str(s), MANIFEST)) for s in sources):
        return None
    return sum(read_manifest(s)["samples"] for s in sources)


def split_by_rank(src: Iterable, rank: int = 0, world_size: int = 1) -> Iterator:
    """WebDataset node splitter: every ``world_size``-th shard, starting at ``rank``."""
    for index, item in enumerate(src):
        if index % world_size == rank:
            yield item


def _worker_seed(rank: int) -> int:
    info = torch.utils.data.get_worker_info()
    return rank * 1000 + (info.id if info is not None else 0)


@dataclass(frozen=True)
class ClipFilter:
    """Which clips a stage sees, decided on the ``json`` metadata before decoding.

    Attributes:
        emotions: keep only clips of these emotions, canonical or alias names (``[sad]`` for
            ``expert_sad``, ``[neutral, happy]``); ``None``: all (an expert stage then takes
            its own emotion).
        compound_only: keep only clips whose condition mixes several basic emotions (gating).
        identities: keep only these people; ``None``: all.
        min_intensity: keep clips with at least this intensity (neutral has intensity 0).
    """

    emotions: list[str] | None = None
    compound_only: bool = False
    identities: list[str] | None = None
    min_intensity: float = 0.0

    def __post_init__(self) -> None:
        if self.emotions is not None:
            object.__setattr__(self, "emotions",
                               [canonical_emotion_name(name) for name in self.emotions])

    @property
    def active(self) -> bool:
        """Whether the filter can reject anything."""
        return bool(self.emotions is not None or self.compound_only or self.identities is not None
                    or self.min_intensity > 0)

    def accepts(self, meta: dict[str, Any]) -> bool:
        """Whether a clip with this metadata passes."""
        if self.emotions is not None and meta["emotion"] not in self.emotions:
            return False
        if self.compound_only and sum(w > 0 for w in meta["weights"]) < 2:
            return False
        if self.identities is not None and meta["identity"] not in self.identities:
            return False
        return meta["intensity"] >= self.min_intensity

    def __call__(self, sample: dict[str, Any]) -> bool:
        """WebDataset ``select`` predicate on a raw sample (undecodable json passes on to
        decoding, which reports it)."""
        try:
            return self.accepts(json.loads(sample["json"]))
        except (KeyError, TypeError, ValueError):
            return True


class DecodedClipCache:
    """Decoded clips kept in memory, up to ``budget_mb``, so that later epochs skip decoding.

    Training revisits every clip once per epoch; on a data set that fits in memory (the tiny
    preset's SynthEmo, ~0.4 MB per 24-frame 64 px clip) decoding the mp4 and wav again each
    time is most of the loader's work, and a loader worker shares the CPU with training. Clips
    are kept in the order first seen until the budget is full, then decoded as before: with
    epochs that revisit every clip, keeping a fixed part beats evicting (least-recently-used
    would evict each clip just before its next turn). One cache per loader worker: each holds
    what its own worker reads. The samplers never write into a clip's arrays, so a cached clip
    is reused as it was decoded.
    """

    def __init__(self, budget_mb: float) -> None:
        self.budget = int(budget_mb * 2**20)
        self.used = 0
        self.clips: dict[tuple[str, str], Clip] = {}

    def decode(self, raw: dict[str, Any]) -> Clip:
        """``decode_clip(raw)``, or the clip as decoded the first time it was seen."""
        key = (raw.get("__url__", ""), raw.get("__key__", ""))
        if (clip := self.clips.get(key)) is not None:
            return clip
        clip = decode_clip(raw)
        size = clip.nbytes
        if self.used + size <= self.budget:
            self.clips[key] = clip
            self.used += size
        return clip


def decode_and_sample(src: Iterable[dict[str, Any]], sampler: ClipSampler, handler: SkipLog,
                      cache: DecodedClipCache | None = None) -> Iterator[dict[str, Any]]:
    """Pipeline stage: raw samples → decoded clips (kept in ``cache`` for later epochs, if
    given) → training samples; bad ones go to handler."""
    decode = cache.decode if cache is not None else decode_clip
    for raw in src:
        try:
            clip = decode(raw)
        except (ShardError, MediaError) as error:
            handler.sample_failed(raw.get("__url__", "?"), raw.get("__key__", "?"), error)
            continue
        handler.sample_ok()
        yield from sampler(clip)


def build_pipeline(
    urls: list[str],
    sampler: ClipSampler,
    batch_size: int,
    clip_filter: ClipFilter | None = None,
    train: bool = True,
    resampled: bool = False,
    shuffle_buffer: int = 64,
    batches_per_worker: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    handler: SkipLog | None = None,
    expected: dict[str, int] | None = None,
    cache_mb: float = 0,
) -> wds.DataPipeline:
    """The WebDataset pipeline of one split, yielding collated batches.

    Training shuffles shards and samples; with ``resampled`` it draws shards at random forever
    (seeded per rank and worker), otherwise it splits them by rank and by worker.
    ``batches_per_worker`` cuts the stream into epochs of that many batches per worker.
    ``expected`` ({shard url: samples}, from the manifests) reports shards that end early.
    ``cache_mb`` keeps decoded clips in memory across epochs (:class:`DecodedClipCache`).
    """
    handler = handler or SkipLog()
    if resampled:
        stages: list[Any] = [wds.ResampledShards(
            urls, seed=seed, deterministic=True,
            worker_seed=functools.partial(_worker_seed, rank))]
    else:
        # the same shard permutation on every rank and worker, then disjoint slices of it
        stages = [wds.SimpleShardList(urls)]
        if train:
            stages.append(wds.detshuffle(len(urls), initial=len(urls), seed=seed))
        stages += [functools.partial(split_by_rank, rank=rank, world_size=world_size),
                   wds.split_by_worker]
    stages += [functools.partial(wds.tariterators.url_opener, handler=handler),
               functools.partial(read_shards, handler=handler, expected=expected)]
    if train and shuffle_buffer > 1:
        stages.append(wds.detshuffle(shuffle_buffer, initial=shuffle_buffer, seed=seed + rank))
    if clip_filter is not None and clip_filter.active:
        stages.append(wds.select(clip_filter))
    cache = DecodedClipCache(cache_mb) if cache_mb > 0 else None  # one per pipeline: it
    # outlives the iterators of every epoch (in a persistent worker, its own copy)
    stages.append(functools.partial(decode_and_sample, sampler=sampler, handler=handler,
                                    cache=cache))
    if train and shuffle_buffer > 1 and sampler.options.windows_per_clip > 1:
        stages.append(wds.detshuffle(shuffle_buffer, initial=shuffle_buffer, seed=seed + 1))
    stages.append(wds.batched(batch_size, collation_fn=collate, partial=not train))
    pipeline = wds.DataPipeline(*stages)
    if batches_per_worker is not None:
        pipeline = pipeline.with_epoch(batches_per_worker)
    return pipeline


# the datamodule's hyperparameters hold them, so its checkpoints still load with weights_only
torch.serialization.add_safe_globals([ClipFilter, SamplingOptions])


class MoEEDataModule(L.LightningDataModule):
    """Shards → batches for the backbone, expert and gating stages.

    Args:
        train: training shard source (folder with manifest, .tar, brace pattern, ``pipe:``/URL,
            or a list of them); ``None`` if this run does not fit.
        val: validation shard source.
        test: test shard source.
        batch_size: samples per batch (per device).
        val_batch_size: samples per validation/test batch; ``None``: ``batch_size``.
        num_workers: loader worker processes per device (0: load in the training process).
        clips: which clips the splits keep (:class:`ClipFilter`).
        sampling: how training samples are cut from clips (:class:`SamplingOptions`);
            validation and test take its ``num_frames``, ``image_size`` and
            ``mask_dilation`` with centred windows and no MNS or jitter.
        resampled: draw training shards at random with replacement (endless, DDP-safe even with
            fewer shards than ranks × workers); ``False``: one pass over disjoint shards.
        samples_per_epoch: training samples per epoch over all devices; ``None``: the manifest's
            sample count × ``sampling.windows_per_clip`` (folder sources only).
        shuffle_buffer: clips held for shuffling in each worker (memory: decoded only after).
        seed: seed of shard order, shuffling, windows, MNS and jitter.
        pin_memory: pin batches for faster host-to-GPU copies.
        strict: stop at the first damaged shard or sample (also when the size check before
            reading finds one) instead of skipping it (:mod:`moee.data.health`).
        decoded_cache_mb: decoded training clips each loader worker keeps in memory so that
            later epochs skip decoding them (:class:`DecodedClipCache`); 0: decode every time.
            A data set that fits (the tiny preset's SynthEmo) then decodes once.
    """

    def __init__(
        self,
        train: ShardSource | None = None,
        val: ShardSource | None = None,
        test: ShardSource | None = None,
        batch_size: int = 2,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        clips: ClipFilter = ClipFilter(),
        sampling: SamplingOptions = SamplingOptions(),
        resampled: bool = True,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 64,
        seed: int = 0,
        pin_memory: bool = False,
        strict: bool = False,
        decoded_cache_mb: float = 0,
    ):
        super().__init__()
        if decoded_cache_mb < 0:
            raise ValueError(f"data.decoded_cache_mb must be >= 0 (0: decode every epoch), "
                             f"got {decoded_cache_mb}")
        self.save_hyperparameters()
        self.sources = {"train": train, "val": val, "test": test}
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.clip_filter = clips
        self.train_options = sampling
        self.eval_options = dataclasses.replace(
            SamplingOptions.evaluation(sampling.num_frames, sampling.image_size),
            mask_dilation=sampling.mask_dilation)
        self.resampled = resampled
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.pin_memory = pin_memory
        self.strict = strict
        self.decoded_cache_mb = decoded_cache_mb
        self.skips = {split: SkipLog(f"{split} data", strict) for split in self.sources}
        self.report = DataReport(self.skips)
        self.resume_step = 0

    def setup(self, stage: str) -> None:
        """Check the shard sizes of the splits this stage reads against their manifests (one
        line per damaged split) and attach the :class:`~moee.data.health.DataReport`."""
        for split in DataReport.STAGE_SPLITS.get(stage, ()):
            skips = self.skips[split]
            for folder in manifest_folders(self.sources[split]):
                damaged = size_check(skips.what, folder, self.strict)
                skips.known.update(d.name for d in damaged)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and self.report not in trainer.callbacks:
            trainer.callbacks.append(self.report)

    @property
    def skipped(self) -> int:
        """Skipped shard reads and samples of the last run, over every rank (after it)."""
        return self.report.skipped

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the global step the training stream has reached."""
        trainer = getattr(self, "trainer", None)
        return {"global_step": trainer.global_step if trainer is not None else self.resume_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """On resume: continue the training stream from the checkpoint's step (``stream_seed``)."""
        self.resume_step = int(state_dict.get("global_step", 0))

    def stream_seed(self) -> int:
        """Seed of the training stream: ``seed`` from scratch; on resume at global step ``s`` a
        seed derived from ``(seed, s)``, so a resumed run neither replays the samples its epoch
        began with nor depends on when it was interrupted — only on the step it resumes at.

        The resumed stream is a fresh draw from the same distribution (shards, windows, MNS and
        jitter), not the exact samples an uninterrupted run would have seen next.
        """
        if not self.resume_step:
            return self.seed
        return zlib.crc32(f"{self.seed}:{self.resume_step}".encode())

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        return rank, world_size

    def _source(self, split: str) -> list[str]:
        source = self.sources[split]
        if source is None:
            raise ValueError(f"MoEEDataModule has no {split} shards; set data.{split}")
        return resolve_shards(source)

    def _loader(self, dataset: wds.DataPipeline, split: str) -> torch.utils.data.DataLoader:
        if self.num_workers > 0:
            self.skips[split].connect()
        return torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory,
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict:
        """Images arrive uint8 from the workers; make them float32 in [-1, 1] on the device."""
        return normalize_images(batch)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """Endless (resampled) or single-pass shuffled training batches, epochs of fixed size."""
        urls = self._source("train")
        rank, world_size = self._rank_and_world()
        workers = max(1, self.num_workers)
        samples = self.samples_per_epoch
        if samples is None:
            clips = manifest_samples(self.sources["train"])
            if clips is None:
                raise ValueError("set data.samples_per_epoch: the train source has no manifest")
            samples = clips * self.train_options.windows_per_clip
        per_worker = max(1, math.ceil(samples / (world_size * workers * self.batch_size)))
        if not self.resampled and len(urls) < world_size * workers:
            log.warning("%d shards for %d ranks × %d workers: some read nothing; use resampled",
                        len(urls), world_size, workers)
        seed = self.stream_seed()
        self.skips["train"].max_in_a_row = MAX_FAILURES_IN_A_ROW  # epochs repeat the stream
        pipeline = build_pipeline(
            urls, ClipSampler(self.train_options, seed=seed, rank=rank), self.batch_size,
            clip_filter=self.clip_filter, train=True, resampled=self.resampled,
            shuffle_buffer=self.shuffle_buffer, batches_per_worker=per_worker, rank=rank,
            world_size=world_size, seed=seed, handler=self.skips["train"],
            expected=manifest_counts(self.sources["train"]), cache_mb=self.decoded_cache_mb,
        )
        return self._loader(pipeline.with_length(per_worker * workers, silent=True), "train")

    def _eval_dataloader(self, split: str) -> torch.utils.data.DataLoader:
        rank, world_size = self._rank_and_world()
        pipeline = build_pipeline(
            self._source(split), ClipSampler(self.eval_options, seed=self.seed, rank=rank),
            self.val_batch_size, clip_filter=self.clip_filter, train=False, rank=rank,
            world_size=world_size, seed=self.seed, handler=self.skips[split],
            expected=manifest_counts(self.sources[split]),
        )
        return self._loader(pipeline, split)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        """One deterministic pass over the validation shards (centred windows, no MNS/jitter)."""
        return self._eval_dataloader("val")

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        """One deterministic pass over the test shards."""
        return self._eval_dataloader("test")

