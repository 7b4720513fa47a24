"""``python -m moee prepare``: layouts, a real face end to end, every bad input, resuming."""

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from moee.data.annotate import TorchScriptAUExtractor, describe_emotion
from moee.data.faces import HaarFaceDetector, MediaPipeFaceDetector
from moee.data.media import encode_wav, stream_frames, write_mp4
from moee.data.prepare import main, prepare_dataset
from moee.data.prepare.identities import Report
from moee.data.prepare.layouts import discover
from moee.data.prepare.process import PrepareConfig
from moee.data.shards import decode_clip, iter_raw_samples, read_manifest, shard_urls
from moee.emotions import ACTION_UNITS

FRAMES = 30
SIZE = 160


def speech(seconds: float, rate: int = 16000, silent: bool = False) -> np.ndarray:
    """A voiced, syllable-modulated harmonic tone standing in for speech."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0 if silent else 0.2) * (voice * envelope).astype(np.float32)


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data", reason="scikit-image gives the real photograph")
    return data.astronaut()


def animate(image: np.ndarray, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """A short clip of a photo under small per-frame shifts and scales."""
    base = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    out = []
    for k in range(frames):
        scale = 1 + 0.03 * np.sin(k / 4)
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), 0, scale)
        matrix[:, 2] += (3 * np.sin(k / 5), 2 * np.cos(k / 6))
        out.append(cv2.warpAffine(base, matrix, (size, size), borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


def write_video(path: Path, frames: np.ndarray, audio: np.ndarray | None = None,
                rate: int = 16000, fps: int = 25) -> Path:
    return write_mp4(path, frames, fps=fps, audio=audio, sample_rate=rate)


def mead_path(root: Path, identity: str, emotion: str, level: int, clip: str) -> Path:
    return root / identity / "video" / "front" / emotion / f"level_{level}" / f"{clip}.mp4"


CONFIG = PrepareConfig(size=96, min_frames=8, mns_refs=2, shard_size=2, crf=23)


def noise_frames(frames: int = FRAMES) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (frames, 64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize(("fps", "frames", "expected"), [(50, 40, 20), (30, 30, 25), (25, 12, 12),
                                                         (10, 10, 25)])
def test_videos_are_resampled_to_25_fps_from_the_nearest_frames(fps, frames, expected, tmp_path):
    """Frame k is grey level 5k. FFmpeg's fps filter starts source frame k at output slot
    round(k · 25 / fps) and shows the latest started frame in each slot: frames are
    duplicated (10 fps) or dropped (50, 30 fps) and the length stays the duration."""
    grey = np.arange(frames) * 5
    video = write_video(tmp_path / "v.mp4", np.repeat(grey, 32 * 32 * 3).reshape(
        frames, 32, 32, 3).astype(np.uint8), fps=fps)
    chunks = list(stream_frames(str(video), chunk=8))
    assert [len(c) for c in chunks[:-1]] == [8] * (len(chunks) - 1)
    out = np.concatenate(chunks)
    assert len(out) == expected
    source = np.abs(out.mean((1, 2, 3))[:, None] - grey[None]).argmin(1)  # which frame shows
    starts = np.floor(np.arange(frames) * 25 / fps + 0.5)
    assert source.tolist() == (np.searchsorted(starts, np.arange(expected), "right") - 1).tolist()


def _nearest_frame_loop(path: str) -> np.ndarray:
    """The hand-written resampling that FFmpeg's fps filter replaced (as it was), kept here
    as the reference: each 25 fps output instant shows the source frame nearest to it."""
    step, buffer, emitted, previous = 1.0 / 25, [], 0, None
    with av.open(path) as container:
        stream = container.streams.video[0]
        half = 0.5 / float(stream.average_rate or 25)
        for frame in container.decode(stream):
            now = float(frame.time if frame.time is not None else emitted * step)
            if previous is not None:
                boundary = (previous[0] + now) / 2
                while emitted * step < boundary:
                    buffer.append(previous[1])
                    emitted += 1
            previous = (now, frame.to_ndarray(format="rgb24"))
        while emitted * step < previous[0] + half or not emitted:
            buffer.append(previous[1])
            emitted += 1
    return np.stack(buffer)


@pytest.mark.parametrize(("fps", "frames"), [(30, 30), (30, 47), (30, 90), (50, 41)])
def test_the_fps_filter_reads_30_and_50_fps_clips_as_the_old_loop_did(fps, frames, tmp_path):
    """Same frame count and the same frames, pixel for pixel. (At 10, 24 or 60 fps the two
    differ by a frame at a tie or at the end; the test above pins the filter's rule.)"""
    rng = np.random.default_rng(fps + frames)
    video = str(write_video(tmp_path / "v.mp4", rng.integers(0, 255, (frames, 48, 48, 3),
                                                             dtype=np.uint8), fps=fps))
    np.testing.assert_array_equal(np.concatenate(list(stream_frames(video, chunk=8))),
                                  _nearest_frame_loop(video))


def test_layouts_are_discovered(tmp_path):
    for rel in ["M003/video/front/happy/level_2/001.mp4", "M003/audio/happy/level_2/001.m4a",
                "M003/video/front/neutral/level_1/001.mp4", "M003/video/left_30/sad/level_1/1.mp4"]:
        (tmp_path / "mead" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mead" / rel).touch()
    mead = discover(tmp_path / "mead", "mead")
    assert [(s.identity, s.emotion, round(s.intensity, 3), s.name) for s in mead] == [
        ("M003", "happy", 0.667, "happy-level_2-001"), ("M003", "neutral", 0.333,
                                                         "neutral-level_1-001")]
    assert mead[0].audio.endswith("001.m4a") and mead[1].audio is None
    for rel in ["RD_Radio1_000.mp4", "sub/WDA_BarackObama_001.mp4"]:
        (tmp_path / "hdtf" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "hdtf" / rel).touch()
    hdtf = discover(tmp_path / "hdtf", "hdtf")
    assert [(s.identity, s.labelled) for s in hdtf] == [("RD_Radio1", False),
                                                        ("WDA_BarackObama", False)]
    for rel in ["p1/sadly_surprised/a.mp4", "p1/happy/level_3/b.mp4"]:
        (tmp_path / "dh" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dh" / rel).touch()
    dh = discover(tmp_path / "dh", "dh-faceemovid")
    assert [(s.emotion, s.intensity) for s in dh] == [("happy", 1.0), ("sadly surprised", 1.0)]
    table = tmp_path / "list.csv"
    table.write_text("path,identity,emotion,intensity,text\nv/a.mp4,p9,sad,0.5,a sad man\n"
                     "v/b.mp4,p9,,,\n")
    rows = discover(tmp_path, "csv", table)
    assert (rows[0].identity, rows[0].emotion, rows[0].intensity, rows[0].text) == (
        "p9", "sad", 0.5, "a sad man")
    assert rows[1].labelled is False and rows[1].video.endswith("v/b.mp4")


def test_detectors_find_the_real_face(astronaut):
    for detector in (MediaPipeFaceDetector(), HaarFaceDetector()):
        (box,) = detector.detect(astronaut)
        assert 150 < box.center[0] < 300 and 60 < box.center[1] < 180


def test_prepare_real_face_end_to_end_and_resume(astronaut, tmp_path):
    root, out = tmp_path / "mead", tmp_path / "shards"
    clip = animate(astronaut)
    write_video(mead_path(root, "W01", "happy", 3, "001"), clip, speech(FRAMES / 25))
    sad = mead_path(root, "W01", "sad", 1, "001")
    write_video(sad, clip[::-1].copy())  # audio in the MEAD side folder, at 44.1 kHz
    side = root / "W01" / "audio" / "sad" / "level_1" / "001.wav"
    side.parent.mkdir(parents=True)
    side.write_bytes(encode_wav(speech(FRAMES / 25, 44100), 44100))
    long = animate(astronaut, frames=50)  # 2 s at max_seconds 1.2 → clips of 30 and 20 frames
    write_video(mead_path(root, "W01", "neutral", 1, "002"), long, speech(2.0), fps=25)
    pair = np.concatenate([clip, clip], axis=2)
    write_video(mead_path(root, "W01", "angry", 2, "003"), pair, speech(FRAMES / 25))
    config = PrepareConfig(**{**CONFIG.__dict__, "max_seconds": 1.2})
    report = prepare_dataset(root, out, "mead", config=config, progress_bar=False)
    assert report.kept == 4 and report.skipped == {"several faces": 1}
    assert report.notes == {"audio resampled from 44100 Hz": 1}
    manifest = read_manifest(out)
    assert manifest["samples"] == 4 and manifest["identities"] == ["W01"]
    clips = {c.key: c for url in shard_urls(out) for c in map(decode_clip, iter_raw_samples(url))}
    assert sorted(clips) == ["W01__happy-level_3-001-s0", "W01__neutral-level_1-002-s0",
                             "W01__neutral-level_1-002-s1", "W01__sad-level_1-001-s0"]
    happy = clips["W01__happy-level_3-001-s0"]
    assert happy.frames.shape == (FRAMES, 96, 96, 3) and happy.meta.intensity == 1.0
    assert [len(clips[k].frames) for k in sorted(clips)][1:3] == [30, 20]
    assert happy.meta.extra["au_source"] == "none" and not happy.aus.any()
    assert "happy" in happy.meta.text.lower()
    mouth = happy.landmarks[:, 48:68].mean(axis=(0, 1))
    eyes = happy.landmarks[:, 36:48].mean(axis=(0, 1))
    assert 0.35 < mouth[0] < 0.65 and eyes[1] < mouth[1] < 0.9  # a face, upright, centred
    assert happy.extras["mnsref.npy"].shape == (2, 96, 96, 3)
    assert happy.extras["mnslmk.npy"].shape == (2, 68, 2)
    assert set(happy.meta.extra["mns_emotions"]) <= {"sad", "neutral"}
    # rerun: nothing is redone
    again = prepare_dataset(root, out, "mead", config=config, progress_bar=False)
    assert again.done_before == 4 and again.kept == 0 and not again.skipped
    assert read_manifest(out)["shards"] == manifest["shards"]
    assert not list(out.glob(".*.tmp"))


def test_bad_inputs_are_skipped_and_counted(tmp_path):
    root, out = tmp_path / "mead", tmp_path / "shards"
    bad = mead_path(root, "B01", "happy", 1, "unreadable")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00not a video at all" * 100)
    write_video(mead_path(root, "B01", "happy", 1, "noface"), noise_frames(), speech(1.2))
    write_video(mead_path(root, "B01", "happy", 1, "noaudio"), noise_frames())
    write_video(mead_path(root, "B01", "happy", 1, "silent"), noise_frames(),
                speech(1.2, silent=True))
    write_video(mead_path(root, "B01", "happy", 1, "short"), noise_frames(5), speech(0.2))
    write_video(mead_path(root, "B01", "contempt", 1, "unknown"), noise_frames(), speech(1.2))
    report = prepare_dataset(root, out, "mead", config=CONFIG, progress_bar=False)
    assert report.kept == 0
    assert report.skipped == {"unreadable video": 1, "no face": 1, "no audio": 1,
                              "silent audio": 1, "too short": 1, "unknown emotion": 1}
    assert read_manifest(out)["samples"] == 0 and not list(out.glob("*.tar*"))
    rerun = prepare_dataset(root, out, "mead", config=CONFIG, progress_bar=False)
    assert rerun.done_before == 6 and not rerun.skipped


def test_interrupted_identity_is_finished_on_rerun(astronaut, tmp_path):
    root, out = tmp_path / "csvset", tmp_path / "shards"
    clip = animate(astronaut, frames=12)
    lines = ["path,identity,emotion,intensity,text"]
    for name, emotion in [("a", "happy"), ("b", "sad"), ("c", "surprised")]:
        write_video(root / f"{name}.mp4", clip, speech(12 / 25))
        lines.append(f"{name}.mp4,P1,{emotion},0.9,")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    config = PrepareConfig(**{**CONFIG.__dict__, "shard_size": 1, "mns_refs": 0})
    first = prepare_dataset(root, out, "csv", root / "list.csv", config=config,
                            progress_bar=False)
    assert first.kept == 3 and len(shard_urls(out)) == 3
    journal = out / ".journal" / "P1.jsonl"  # simulate a crash before the last shard's record
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-1]) + "\n{\"torn")
    second = prepare_dataset(root, out, "csv", root / "list.csv", config=config,
                             progress_bar=False)
    assert (second.done_before, second.kept) == (2, 1)
    assert read_manifest(out)["samples"] == 3 and len(list(out.glob("*.tar"))) == 3


def test_torchscript_au_extractor_maps_its_aus(tmp_path):
    class Tiny(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)) * 0 + 0.25, x.mean((1, 2, 3)) * 0 + 2.0], 1)

    path = tmp_path / "au.pt2"
    batch = {"x": {0: torch.export.Dim("n")}}
    program = torch.export.export(Tiny(), (torch.zeros(2, 3, 32, 32),), dynamic_shapes=batch)
    torch.export.save(program, str(path))
    extractor = TorchScriptAUExtractor(path, au_names=("AU12", "AU99"), input_size=32)
    aus = extractor(np.zeros((3, 48, 48, 3), dtype=np.uint8), np.zeros((3, 68, 2)))
    assert aus.shape == (3, len(ACTION_UNITS))
    assert np.allclose(aus[:, ACTION_UNITS.index("AU12")], 0.25) and aus.sum() == 0.75
    with pytest.raises(FileNotFoundError, match="export"):
        TorchScriptAUExtractor(tmp_path / "missing.pt")


def test_descriptions_paraphrase_label_and_aus():
    aus = np.zeros((4, len(ACTION_UNITS)), dtype=np.float32)
    aus[:, ACTION_UNITS.index("AU15")] = 0.9
    text = describe_emotion("sad", 0.3, aus, variant="k1")
    assert "sad" in text and "slightly" in text and "lip corners pulled down" in text
    assert {describe_emotion("happy", 1.0, variant=str(i)) for i in range(20)}.__len__() > 1


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--layout" in capsys.readouterr().out


def test_cli_options_reach_the_preparation(monkeypatch, tmp_path, capsys):
    """The clip options are declared once (PrepareConfig) and arrive as one nested group."""
    seen = {}

    def fake_prepare_dataset(input, output, layout, csv, identities, workers, config):
        seen.update(layout=layout, identities=identities, workers=workers, config=config)
        return Report()

    monkeypatch.setattr("moee.data.prepare.prepare_dataset", fake_prepare_dataset)
    main([str(tmp_path), str(tmp_path / "out"), "--layout", "hdtf", "--workers", "3",
          "--identities", "[A1, A2]", "--clips.size", "128", "--clips.split", "val",
          "--clips.mns_refs", "0"])
    assert seen == {"layout": "hdtf", "identities": ["A1", "A2"], "workers": 3,
                    "config": PrepareConfig(size=128, split="val", mns_refs=0)}


@pytest.mark.slow
def test_parallel_workers(astronaut, tmp_path):
    root, out = tmp_path / "mead", tmp_path / "shards"
    clip = animate(astronaut, frames=12)
    for identity in ("A1", "A2"):
        write_video(mead_path(root, identity, "happy", 3, "001"), clip, speech(12 / 25))
    report = prepare_dataset(root, out, "mead", workers=2, config=CONFIG, progress_bar=False)
    assert report.kept == 2 and read_manifest(out)["identities"] == ["A1", "A2"]
