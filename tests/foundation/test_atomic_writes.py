"""A full disk, a failing device or a SIGKILL while writing loses nothing: checkpoints, sharded
checkpoints, exports, shards, videos; the error is one line naming the path and the free space."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from safetensors import SafetensorError

import moee.data.media
import moee.models.weights
from moee.data.media import read_video, write_mp4
from moee.data.shards import ShardWriter
from moee.launch.checkpoints import AtomicCheckpointIO
from moee.utils import WriteError, atomic_path, remove_stale_temps, write_errno, write_text

from .test_media_shards import make_clip, smooth_frames


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def assert_one_line(error: BaseException, path: Path, reason: str) -> None:
    text = str(error)
    assert "\n" not in text and text.startswith(f"cannot write {path}: {reason}"), text
    assert "free in" in text and "previous file" in text, text


def full_disk(code: int = errno.ENOSPC) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_checkpoint_write_that_fails_keeps_the_previous_one(tmp_path, monkeypatch, code):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def failing_save(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[:100])  # half a checkpoint, then the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") \
            from full_disk(code=code)  # what torch.save raises on a full disk

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(WriteError) as info:
        io_plugin.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert_one_line(info.value, path, os.strerror(code))
    monkeypatch.setattr(torch, "save", real_save)
    assert io_plugin.load_checkpoint(path)["step"] == 1
    assert leftovers(path.parent) == []


def test_export_that_fails_keeps_the_previous_export(tmp_path, monkeypatch):
    from moee.stages import ExpertModule
    from moee.stages.losses import MoEELoss

    stage = ExpertModule(emotion="sad", loss=MoEELoss(perceptual_weights=None))
    path = tmp_path / "weights" / "expert_sad.safetensors"
    stage.export(path)
    before = path.read_bytes()

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(moee.models.weights, "save_file", failing_save_file)
    with pytest.raises(WriteError) as info:
        stage.export(path)
    assert_one_line(info.value, path, "No space left on device")
    assert path.read_bytes() == before and leftovers(path.parent) == []


def test_shard_write_that_fails_keeps_the_previous_shard(tmp_path, monkeypatch):
    with ShardWriter(tmp_path, max_samples=2) as writer:
        writer.write(make_clip(clip="old0"))
    shard = tmp_path / "shard-000000.tar"
    before = shard.read_bytes()
    real_write = wds.TarWriter.write
    calls = []

    def write_then_fail(self, sample):
        calls.append(sample["__key__"])
        if len(calls) == 2:
            raise full_disk()
        return real_write(self, sample)

    monkeypatch.setattr(wds.TarWriter, "write", write_then_fail)
    writer = ShardWriter(tmp_path, max_samples=2)
    writer.write(make_clip(clip="new0"))
    with pytest.raises(WriteError) as info:
        writer.write(make_clip(clip="new1"))
    assert_one_line(info.value, shard, "No space left on device")
    assert shard.read_bytes() == before and leftovers(tmp_path) == []
    assert writer.close() == []  # the dropped shard is not reported as written


def test_video_write_that_fails_keeps_the_previous_video(tmp_path, monkeypatch):
    path = tmp_path / "out" / "anna.mp4"
    write_mp4(path, smooth_frames(4))

    def failing_encode(handle, *args):
        handle.write(b"\x00" * 64)
        raise full_disk(code=errno.EIO)

    monkeypatch.setattr(moee.data.media, "_write_mp4", failing_encode)
    with pytest.raises(WriteError) as info:
        write_mp4(path, smooth_frames(8))
    assert_one_line(info.value, path, "Input/output error")
    assert read_video(path)[0].shape[0] == 4 and leftovers(path.parent) == []


def test_sharded_checkpoint_folder_that_fails_keeps_the_previous_one(tmp_path, monkeypatch):
    """FSDP2's checkpoint folder (one process in a gloo group): the new folder is written aside
    and replaces the old one only when complete."""
    import lightning.pytorch.strategies.model_parallel as model_parallel

    from moee.launch.fsdp import FSDP2Strategy

    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0,
                                         world_size=1)
    try:
        strategy = FSDP2Strategy()
        path = tmp_path / "checkpoints" / "last.ckpt"  # its folder does not exist yet
        strategy.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "step": 1}, path)
        files = sorted(p.name for p in path.iterdir())
        real_save = model_parallel._distributed_checkpoint_save

        def failing_save(state, folder):
            real_save(state, folder)
            raise full_disk()

        monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", failing_save)
        with pytest.raises(WriteError) as info:
            strategy.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "step": 2}, path)
        assert_one_line(info.value, path, "No space left on device")
        monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", real_save)
        assert sorted(p.name for p in path.iterdir()) == files
        assert torch.load(path / "meta.pt")["step"] == 1 and leftovers(path.parent) == []
        strategy.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "step": 3}, path)
        assert torch.load(path / "meta.pt")["step"] == 3 and leftovers(path.parent) == []
    finally:
        torch.distributed.destroy_process_group()


KILLED_WRITER = """
import os, signal, sys
from moee.utils import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half of the new file")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)])
    assert result.returncode == -signal.SIGKILL
    assert target.read_text() == "old"
    assert len(leftovers(tmp_path)) == 1  # a SIGKILL cannot clean up after itself...
    write_text(target, "new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []  # ...the next write does


def test_a_folder_moved_aside_by_a_killed_process_is_put_back(tmp_path):
    final = tmp_path / "vae"
    final.mkdir()
    (final / "config.json").write_text("old")
    with atomic_path(final, directory=True) as tmp:  # a folder replaces a folder
        (tmp / "config.json").write_text("new")
    assert (final / "config.json").read_text() == "new" and leftovers(tmp_path) == []
    # a process killed between moving the old folder aside and renaming the new one in
    name = subprocess.run(
        [sys.executable, "-c", "import sys; from moee.utils import new_temp; "
         "print(new_temp(sys.argv[1], directory=True, suffix='.old'))", str(final)],
        capture_output=True, text=True, check=True).stdout.strip()
    os.rmdir(name)
    final.rename(name)
    remove_stale_temps(final)
    assert (final / "config.json").read_text() == "new" and leftovers(tmp_path) == []


def test_storage_errors_are_recognised_through_library_wrappers():
    assert write_errno(full_disk()) == errno.ENOSPC
    wrapped = RuntimeError("unexpected pos")
    wrapped.__context__ = full_disk(code=errno.EIO)
    assert write_errno(wrapped) == errno.EIO
    assert write_errno(SafetensorError("I/O error: Disk quota exceeded (os error 122)")) == 122
    assert write_errno(FileNotFoundError(errno.ENOENT, "missing")) is None
    assert write_errno(ValueError("no errno")) is None


def test_other_errors_pass_unchanged_and_leave_nothing(tmp_path):
    with pytest.raises(KeyError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(np.zeros(10).tobytes())
        raise KeyError("a bug, not the disk")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_fit_is_one_error_line_and_keeps_the_last_checkpoint(tmp_path,
                                                                                 monkeypatch):
    """Through ``python -m moee fit``: the CLI gives every trainer the atomic checkpoint IO."""
    import yaml

    from moee.cli import main as moee_main
    from tests.clips import write_test_shards
    from tests.data.test_health import fit_config

    shards = write_test_shards(tmp_path / "shards", num_frames=12, size=32)
    config = fit_config(shards, tmp_path)
    settings = yaml.safe_load(config.read_text())
    settings["trainer"].update(enable_checkpointing=True, max_epochs=1)
    config.write_text(yaml.safe_dump(settings))
    moee_main(["fit", "--config", str(config)])
    (checkpoint,) = (tmp_path / "csv" / "version_0" / "checkpoints").iterdir()
    before = checkpoint.read_bytes()
    settings["trainer"]["max_epochs"] = 2
    config.write_text(yaml.safe_dump(settings))

    def full(obj, handle, *args, **kwargs):
        raise RuntimeError("unexpected pos") from full_disk()

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit) as info:
        moee_main(["fit", "--config", str(config), "--ckpt_path", str(checkpoint)])
    message = str(info.value.code)
    assert message.startswith(f"error: cannot write {checkpoint.parent}/epoch=1-step=")
    assert "No space left on device" in message and "\n" not in message
    assert checkpoint.read_bytes() == before and leftovers(checkpoint.parent) == []


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_written_files_and_folders_honour_the_umask(tmp_path, umask_022):
    """Teammates on a shared cluster folder can read what the project writes (mkstemp's 0600
    would survive the rename): atomic files and folders, safetensors (the probe cache, as every
    export: safetensors writes its own 0600 file over the temporary), an animation's frames."""
    from moee.evaluation.probes import SynthEmoProbes, save_probes
    from moee.inference.outputs import Animation

    written = [write_text(tmp_path / "notes.txt", "x"),
               save_probes(SynthEmoProbes(size=32), {}, tmp_path / "cache")]
    with atomic_path(tmp_path / "folder", directory=True) as folder:
        (folder / "a.txt").write_text("a")
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    Animation(frames, np.zeros(2 * 640, np.float32)).save(tmp_path / "a.mp4",
                                                          frames_dir=tmp_path / "frames")
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o644, path
    for folder in (tmp_path / "folder", tmp_path / "frames"):
        assert folder.stat().st_mode & 0o777 == 0o755, folder
    assert len(list((tmp_path / "frames").glob("*.png"))) == 2
    assert leftovers(tmp_path) == []
