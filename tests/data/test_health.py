"""Damaged data: the size check before a split is read, one line per problem, the right
samples read from the rest, counts per epoch, the end-of-run summary, strict mode, the exit
status of ``fit``, and ``python -m moee data verify``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from moee.cli import main as moee_main
from moee.data.datamodule import MoEEDataModule
from moee.data.health import DamagedDataError
from moee.data.health import main as data_main
from moee.data.sampling import SamplingOptions
from moee.data.shards import read_manifest, shard_urls
from tests.clips import write_test_shards
from tests.data.damage import (
    damage_video,
    keys_by_shard,
    replace_with_garbage,
    truncate_in_second_sample,
)

NUM_FRAMES = 4
WINDOWS = SamplingOptions(num_frames=NUM_FRAMES)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 clips (2 identities × happy, sad, happily surprised, neutral), 2 per shard."""
    return write_test_shards(tmp_path_factory.mktemp("health"), num_frames=12, size=32)


def damaged_copy(shards: Path, folder: Path, damage: str) -> tuple[Path, set[str]]:
    """A copy of the shards with one kind of damage to shard 1; returns it and the keys that
    must still be read."""
    shutil.copytree(shards, folder)
    url = shard_urls(folder)[1]
    keys = keys_by_shard(folder)
    lost = set(keys[Path(url).name])
    if damage == "truncated":
        truncate_in_second_sample(url)
        lost = lost - {keys[Path(url).name][0]}
    elif damage == "garbage":
        replace_with_garbage(url, size=5000)
    elif damage == "garbage_same_size":
        replace_with_garbage(url)
    elif damage == "bad_video":
        lost = {keys[Path(url).name][0]}
        damage_video(url, next(iter(lost)))
    return folder, {k for ks in keys.values() for k in ks} - lost


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "garbage_same_size", "bad_video"])
def test_each_damage_is_one_line_and_the_rest_is_read(shards, tmp_path, caplog, damage,
                                                      workers):
    folder, intact = damaged_copy(shards, tmp_path / "bad", damage)
    data = MoEEDataModule(val=str(folder), batch_size=3, num_workers=workers, sampling=WINDOWS)
    with caplog.at_level(logging.WARNING):
        data.setup("validate")
        keys = [k for batch in data.val_dataloader() for k in batch["key"]]
        records = data.skips["val"].drain(timeout=1.0)
    assert sorted(keys) == sorted(intact)  # the right samples, each once
    assert len(records) == 1
    assert records[0].kind == ("sample" if damage == "bad_video" else "shard")
    lines = warnings_of(caplog)
    assert len(lines) == 1, lines  # the size check's line, or the first problem of the shard
    assert "shard-000001.tar" in lines[0]
    if damage in ("truncated", "garbage"):
        assert lines[0].startswith("val data: 1 of 4 shards in ") and "they hold 2 of 8 " \
            "samples (25%)" in lines[0]
    else:
        assert lines[0].startswith("val data: skipping ")


def test_the_size_check_names_every_damaged_shard_and_their_share(shards, tmp_path, caplog):
    folder = tmp_path / "bad"
    shutil.copytree(shards, folder)
    urls = shard_urls(folder)
    for url in urls[:3]:
        truncate_in_second_sample(url)
    replace_with_garbage(urls[3], size=4096)
    (folder / "shard-000002.tar").unlink()
    with caplog.at_level(logging.WARNING):
        MoEEDataModule(train=str(folder), num_workers=0).setup("fit")
    (line,) = warnings_of(caplog)
    assert line.startswith(f"train data: 4 of 4 shards in {folder} are damaged (shard-000000.tar "
                           "truncated (")
    assert "shard-000002.tar missing" in line and "and 1 more" in line
    assert "they hold 8 of 8 samples (100%)" in line
    assert "python -m moee data verify" in line and "data.init_args.strict" in line


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_stops_at_the_first_damaged_shard(shards, tmp_path, workers):
    folder, _ = damaged_copy(shards, tmp_path / "truncated", "truncated")
    data = MoEEDataModule(val=str(folder), num_workers=workers, strict=True)
    with pytest.raises(DamagedDataError, match="strict is true"):
        data.setup("validate")  # the size check already
    folder, _ = damaged_copy(shards, tmp_path / "same_size", "garbage_same_size")
    data = MoEEDataModule(val=str(folder), num_workers=workers, sampling=WINDOWS, strict=True)
    data.setup("validate")  # sizes match: only reading finds it
    with pytest.raises(DamagedDataError) as info:
        list(data.val_dataloader())
    message = str(info.value)
    assert "\n" not in message and message.startswith("val data: shard-000001.tar: ")
    assert message.endswith("stopped because data.init_args.strict is true")


def test_an_endless_stream_without_readable_shards_stops(shards, tmp_path):
    folder = tmp_path / "garbage"
    shutil.copytree(shards, folder)
    for url in shard_urls(folder):
        replace_with_garbage(url)
    data = MoEEDataModule(train=str(folder), num_workers=0, sampling=WINDOWS)
    with pytest.raises(DamagedDataError, match="in a row failed.*nothing readable is left"):
        next(iter(data.train_dataloader()))


class CountingModule(L.LightningModule):
    """The smallest LightningModule that trains on MoEE batches (for CLI runs in tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        loss = (self.weight - batch["frames"].mean()) ** 2
        self.log("loss", loss, batch_size=len(batch["key"]))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_config(folder: Path, root: Path, workers: int = 0) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "log_every_n_steps": 1, "default_root_dir": str(root),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root), "name": "csv",
                                             "version": 0}}},
        "model": {"class_path": f"{__name__}.CountingModule"},
        "data": {"class_path": "moee.data.datamodule.MoEEDataModule",
                 "init_args": {"train": str(folder), "batch_size": 2, "num_workers": workers,
                               "sampling": {"num_frames": NUM_FRAMES}, "samples_per_epoch": 8,
                               "resampled": False}},
    }
    path = root / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_fit_counts_skips_per_epoch_summarises_once_and_exits_1(shards, tmp_path, caplog,
                                                                workers):
    folder, _ = damaged_copy(shards, tmp_path / "bad", "garbage_same_size")
    config = fit_config(folder, tmp_path, workers)
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as info:
        moee_main(["fit", "--config", str(config)])
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    column = header.index("data/train_skipped_shards")
    per_epoch = [float(v) for row in metrics[1:] if (v := row.split(",")[column])]
    reads = int(sum(per_epoch))
    assert len(per_epoch) == 2 and min(per_epoch) >= 1  # logged every epoch (an epoch of 8
    # samples reads the shards twice: 6 samples are left)
    assert str(info.value.code) == (f"error: {reads} damaged shard reads and samples skipped "
                                    "(see the line above); exit status 1 (--allow_skips "
                                    "accepts skips)")
    lines = warnings_of(caplog)
    assert lines[0].startswith("train data: skipping shard-000001.tar: ")  # first read: news
    assert lines[-1].startswith(f"train data: skipped {reads} read(s) of 1 damaged shard(s) in "
                                "2 epoch(s) — shard-000001.tar: ")
    assert len(lines) == 2, lines  # nothing in between: later reads are only counted
    caplog.clear()
    moee_main(["fit", "--config", str(config), "--allow_skips", "true"])  # exit status 0


def test_a_clean_fit_reports_nothing_and_exits_0(shards, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        moee_main(["fit", "--config", str(fit_config(shards, tmp_path))])
    assert not [line for line in warnings_of(caplog) if "data" in line]


def test_verify_checks_every_checksum(shards, tmp_path, capsys):
    data_main(["verify", str(shards)])
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{shards}: all 4 shards match the manifest (sha256 and size; 8 "
                          "samples,")
    folder, _ = damaged_copy(shards, tmp_path / "bad", "garbage_same_size")
    with pytest.raises(SystemExit) as info:
        data_main(["verify", str(folder)])
    assert info.value.code == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{folder}/shard-000001.tar: sha256 differs from the manifest (2 samples)",
                     f"data verify: 1 of 4 shards in {folder} are damaged (shard-000001.tar sha256 "
                     "differs from the manifest); they hold 2 of 8 samples (25%)"]
    data_main(["verify", str(folder), "--sizes_only", "true"])  # same size: only sha256 sees it
    assert read_manifest(folder)["samples"] == 8


def test_data_verify_is_a_cli_command(shards, capsys):
    moee_main(["data", "verify", str(shards)])
    assert "all 4 shards match" in capsys.readouterr().out
