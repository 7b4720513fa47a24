"""MoEEDataModule: streaming, alignment after decoding, DDP/worker splits, filters, bad data."""

import io
import logging
import shutil
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from moee.cli import MoEECLI
from moee.data.batch import from_numpy_frames, normalize_images, to_numpy_frames
from moee.data.datamodule import (
    ClipFilter,
    MoEEDataModule,
    SkipLog,
    build_pipeline,
    resolve_shards,
)
from moee.data.media import SAMPLES_PER_FRAME
from moee.data.sampling import ClipSampler, SamplingOptions, clip_audio
from moee.data.shards import decode_clip, iter_raw_samples, read_manifest, shard_urls
from tests.clips import decode_audio_index, decode_frame_index, write_test_shards

NUM_FRAMES = 6
WINDOWS = SamplingOptions(num_frames=NUM_FRAMES)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """2 identities × (happy, sad, happily surprised, neutral) × 1 clip, 2 clips per shard."""
    return write_test_shards(tmp_path_factory.mktemp("shards"), num_frames=20, size=32)


ALL_KEYS = {f"id{i}__{e}0" for i in range(2)
            for e in ("happy", "sad", "happily_surprised", "neutral")}


def keys_of(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def test_eval_batches_are_aligned_after_decoding(shards):
    dm = MoEEDataModule(val=str(shards), batch_size=3, num_workers=0, sampling=WINDOWS)
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]
    assert sorted(keys_of(batches)) == sorted(ALL_KEYS)
    assert batches[0]["frames"].dtype == torch.float32
    raw = {clip.key: clip_audio(clip) for url in shard_urls(str(shards))
           for clip in map(decode_clip, iter_raw_samples(url))}
    for batch in batches:
        for i, start in enumerate(batch["start_frame"].tolist()):
            frames = [decode_frame_index(f) for f in to_numpy_frames(batch["frames"][i])]
            assert frames == list(range(start, start + NUM_FRAMES))
            # the clip's audio comes normalised as one track: undo it to read the tones
            track = raw[batch["key"][i]]
            audio = batch["audio"][i].numpy() * track.std() + track.mean()
            chunks = audio.reshape(-1, SAMPLES_PER_FRAME)
            audio = [decode_audio_index(c) for c in chunks]
            assert audio == list(range(start - 2, start + NUM_FRAMES + 2))


def test_numpy_frames_round_trip():
    """uint8 frames → the model's [-1, 1] images (as normalize_images) → the same uint8 frames."""
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 8, 6, 3), dtype=np.uint8)
    images = from_numpy_frames(frames)
    assert images.shape == (2, 5, 3, 8, 6) and images.dtype == torch.float32
    torch.testing.assert_close(images, torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float()
                               .div_(127.5).sub_(1.0), rtol=0, atol=0)
    np.testing.assert_array_equal(to_numpy_frames(images), frames)
    assert from_numpy_frames(frames[0, 0]).shape == (3, 8, 6)


def test_train_loader_with_two_workers_has_fixed_epochs(shards):
    dm = MoEEDataModule(train=str(shards), batch_size=3, num_workers=2, samples_per_epoch=12,
                        sampling=SamplingOptions(num_frames=NUM_FRAMES, mns_prob=0.5,
                                                 jitter_prob=0.5))
    loader = dm.train_dataloader()
    assert len(loader) == 4  # ceil(12 / (2 workers × 3)) = 2 batches per worker
    for _ in range(2):  # persistent workers, a second epoch of the same size
        batches = list(loader)
        assert len(batches) == 4
    batch = batches[0]
    assert batch["frames"].dtype == torch.uint8  # until on_after_batch_transfer
    batch = normalize_images(batch)
    assert batch["frames"].dtype == torch.float32 and batch["frames"].abs().max() <= 1
    assert batch["frames"].shape == (3, NUM_FRAMES, 3, 32, 32)
    assert batch["audio"].shape == (3, (NUM_FRAMES + 4) * SAMPLES_PER_FRAME)
    assert batch["reference_is_masked"].dtype == torch.bool


def _counting_decodes(monkeypatch, log):
    """Make every clip decode append a line to ``log`` (also from forked loader workers)."""
    import moee.data.datamodule as datamodule

    def counted(raw):
        with open(log, "a") as f:
            f.write(raw["__key__"] + "\n")
        return decode_clip(raw)

    monkeypatch.setattr(datamodule, "decode_clip", counted)
    return lambda: log.read_text().split() if log.exists() else []


@pytest.mark.parametrize(("workers", "budget_mb", "decodes"),
                         [(0, 64, 8), (1, 64, 8), (0, 0, 16), (0, 0.26, 14)])
def test_decoded_clip_cache_decodes_once_and_changes_no_batch(shards, tmp_path, monkeypatch,
                                                               workers, budget_mb, decodes):
    """Two epochs over 8 clips: with room for every clip each is decoded once (also in a
    persistent loader worker, whose cache outlives the epoch); without a cache twice; with room
    for two (0.26 MB, clips of 0.12-0.13 MB) those once and the other six twice. The batches
    are those of no cache, bit for bit."""
    decoded = _counting_decodes(monkeypatch, tmp_path / "decodes.log")

    def two_epochs(cache_mb):
        dm = MoEEDataModule(train=str(shards), batch_size=2, num_workers=workers,
                            resampled=False, decoded_cache_mb=cache_mb,
                            sampling=replace(WINDOWS, mns_prob=0.5, jitter_prob=0.5))
        loader = dm.train_dataloader()
        return [batch for _ in range(2) for batch in loader]

    cached = two_epochs(budget_mb)
    assert len(decoded()) == decodes
    assert sorted(set(decoded())) == sorted(ALL_KEYS)
    for a, b in zip(cached, two_epochs(0), strict=True):
        assert a["key"] == b["key"] and a["start_frame"].tolist() == b["start_frame"].tolist()
        for name in ("frames", "reference", "motion_frames", "audio"):
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_epoch_size_defaults_to_manifest(shards):
    dm = MoEEDataModule(train=str(shards), batch_size=2, num_workers=0, sampling=WINDOWS)
    assert len(dm.train_dataloader()) == 4  # 8 clips / batch 2


def test_ranks_and_workers_read_disjoint_shards(shards):
    urls = resolve_shards(str(shards))
    assert len(urls) == 4
    seen = []
    for rank in range(2):
        pipeline = build_pipeline(urls, ClipSampler(WINDOWS), 1,
                                  train=True, resampled=False, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=2)
        by_worker = keys_of(loader)
        seen.append(set(by_worker))
        assert len(by_worker) == len(set(by_worker)) == 4  # each clip once per rank
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == ALL_KEYS


def test_worker_split_is_disjoint_within_a_rank(shards, monkeypatch):
    urls = resolve_shards(str(shards))
    keys = []
    for worker in range(2):  # what DataLoader worker `worker` of 2 sees
        info = type("Info", (), {"id": worker, "num_workers": 2, "seed": 0, "dataset": None})
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
        pipeline = build_pipeline(urls, ClipSampler(WINDOWS), 1,
                                  train=False)
        keys.append({k for batch in pipeline for k in batch["key"]})
    assert not keys[0] & keys[1] and keys[0] | keys[1] == ALL_KEYS


@pytest.mark.parametrize(
    ("filters", "check"),
    [
        ({"emotions": ["sad"]}, lambda b: set(b["emotion_name"]) == {"sad"}),
        ({"emotions": ["sadness", "joy"]}, lambda b: set(b["emotion_name"]) <= {"sad", "happy"}),
        ({"compound_only": True}, lambda b: set(b["emotion_name"]) == {"happily surprised"}),
        ({"identities": ["id1"]}, lambda b: set(b["identity"]) == {"id1"}),
        ({"min_intensity": 0.4}, lambda b: "neutral" not in b["emotion_name"]),
    ],
)
def test_filters(shards, filters, check):
    dm = MoEEDataModule(val=str(shards), batch_size=8, num_workers=0, clips=ClipFilter(**filters),
                        sampling=WINDOWS)
    (batch,) = list(dm.val_dataloader())
    assert check(batch) and len(batch["key"]) >= 2


def test_expert_filter_keeps_mns_references_of_other_emotions(shards):
    dm = MoEEDataModule(train=str(shards), batch_size=2, num_workers=0, samples_per_epoch=2,
                        clips=ClipFilter(emotions=["sad"]),
                        sampling=SamplingOptions(num_frames=NUM_FRAMES, mns_prob=1.0))
    batch = next(iter(dm.train_dataloader()))
    assert batch["emotion_name"] == ["sad", "sad"]
    assert batch["reference_is_masked"].all()


def test_nested_options_reach_the_sampling_and_the_filter(shards, tmp_path):
    """The clip and sampling options are declared once (ClipFilter, SamplingOptions) and arrive
    as nested groups, from a YAML block and from the command line."""
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "class_path": "moee.data.datamodule.MoEEDataModule",
        "init_args": {"val": str(shards), "sampling": {"num_frames": 8, "mask_dilation": 0.1,
                                                       "mns_prob": 0.5}}}}))
    cli = MoEECLI(args=["--model", "lightning.pytorch.demos.boring_classes.BoringModel",
                        "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
                        "--config", str(config), "--data.init_args.sampling.num_frames", "4",
                        "--data.init_args.clips.emotions", "[sadness]"], run=False)
    dm = cli.datamodule
    assert dm.train_options == SamplingOptions(num_frames=4, mask_dilation=0.1, mns_prob=0.5)
    assert dm.eval_options == replace(SamplingOptions.evaluation(4), mask_dilation=0.1)
    assert dm.clip_filter == ClipFilter(emotions=["sad"])
    assert dm.hparams["sampling"]["num_frames"] == 4
    (batch,) = list(dm.val_dataloader())
    assert batch["emotion_name"] == ["sad", "sad"] and batch["frames"].shape[1] == 4


def test_hyperparameters_load_weights_only(tmp_path):
    """Checkpoints hold the datamodule's hyperparameters, option dataclasses included; resuming
    reads them with ``weights_only``."""
    dm = MoEEDataModule(clips=ClipFilter(emotions=["sad"]), sampling=SamplingOptions(num_frames=4))
    torch.save({dm.CHECKPOINT_HYPER_PARAMS_KEY: dict(dm.hparams)}, tmp_path / "data.ckpt")
    loaded = torch.load(tmp_path / "data.ckpt", weights_only=True)
    assert loaded[dm.CHECKPOINT_HYPER_PARAMS_KEY] == dict(dm.hparams)


def test_filter_rejects_on_json_only():
    keep = ClipFilter(emotions=["happy"], min_intensity=0.5)
    assert keep({"json": b'{"emotion": "happy", "weights": [0,0,0,1,0,0], "intensity": 0.6,'
                         b' "identity": "a"}'})
    assert not keep({"json": b'{"emotion": "happy", "weights": [0,0,0,1,0,0], "intensity": 0.4,'
                             b' "identity": "a"}'})
    assert keep({"json": b"not json"})  # passed on, so decoding reports it by key


@pytest.mark.parametrize("form", ["folder", "list", "brace", "pipe"])
def test_shard_source_forms(shards, form):
    urls = shard_urls(shards)
    source = {
        "folder": str(shards),
        "list": urls,
        "brace": str(shards / "shard-{000000..000003}.tar"),
        "pipe": [f"pipe:cat {u}" for u in urls],
    }[form]
    dm = MoEEDataModule(val=source, batch_size=8, num_workers=0, sampling=WINDOWS)
    assert sorted(keys_of(dm.val_dataloader())) == sorted(ALL_KEYS)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no manifest"):
        resolve_shards(str(tmp_path))
    with pytest.raises(ValueError, match="do not exist"):
        resolve_shards(str(tmp_path / "x-{000..001}.tar"))
    with pytest.raises(ValueError, match="no train shards"):
        MoEEDataModule(val=str(tmp_path)).train_dataloader()
    with pytest.raises(ValueError, match="decoded_cache_mb must be >= 0"):
        MoEEDataModule(train=str(tmp_path), decoded_cache_mb=-1)


def test_corrupt_samples_and_shards_are_logged_and_skipped(shards, tmp_path, caplog):
    folder = tmp_path / "bad"
    shutil.copytree(shards, folder)
    urls = shard_urls(folder)
    # shard 0: one sample's video replaced by garbage
    with tarfile.open(urls[0]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(urls[0], "w") as tar:
        for member, data in members:
            if member.name.endswith(".mp4") and "id0__happy0" in member.name:
                data = b"this is not an mp4"
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    # shard 1: truncated in the middle
    data = open(urls[1], "rb").read()
    open(urls[1], "wb").write(data[: len(data) // 2 + 100])
    dm = MoEEDataModule(val=str(folder), batch_size=8, num_workers=0, sampling=WINDOWS)
    with caplog.at_level(logging.WARNING, logger="moee.data.datamodule"):
        keys = keys_of(dm.val_dataloader())
    assert "id0__happy0" not in keys
    assert set(keys) >= ALL_KEYS - {"id0__happy0", "id0__sad0", "id0__happily_surprised0",
                                    "id0__neutral0"}
    assert dm.skips["val"].count >= 2
    assert "id0__happy0" in caplog.text


def test_skiplog_counts():
    handler = SkipLog("x")
    assert handler(ValueError("sample 'a' is bad")) and handler(ValueError("b"))
    assert handler.count == 2


def test_resampled_ranks_draw_differently(shards):
    urls = resolve_shards(str(shards))
    draws = []
    for rank in range(2):
        pipeline = build_pipeline(urls, ClipSampler(WINDOWS), 2,
                                  resampled=True, batches_per_worker=4, rank=rank, world_size=2)
        draws.append([k for b in pipeline for k in b["key"]])
    assert len(draws[0]) == len(draws[1]) == 8
    assert draws[0] != draws[1]


def test_manifest_counts(shards):
    manifest = read_manifest(shards)
    assert manifest["samples"] == 8 and len(manifest["shards"]) == 4
