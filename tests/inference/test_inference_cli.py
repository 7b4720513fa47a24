"""``python -m moee animate`` and ``python -m moee predict`` end to end, and every bad input."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from moee.cli import MoEECLI
from moee.cli import main as moee_main
from moee.data.media import read_audio, read_video
from moee.inference.animate import main as animate_main
from tests.inference.nets import live_tiny_net

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = ["--sampler.steps", "1", "--sampler.clip-frames", "4", "--sampler.audio-guidance", "1",
        "--sampler.emotion-guidance", "1", "--progress", "false"]


def write_wav(path: Path, audio: np.ndarray, rate: int, channels: int = 1) -> Path:
    """16-bit PCM wav, the mono signal copied to every channel."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(pcm[:, None], channels, 1).tobytes())
    return path


def speech(seconds: float, rate: int) -> np.ndarray:
    """A speech-like buzz: 150 Hz under a 4 Hz syllable envelope."""
    t = np.arange(round(seconds * rate)) / rate
    return 0.3 * np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))


def write_inputs(root: Path) -> Path:
    """Random tiny weights (live branches) and the common inputs: the astronaut photo, two
    faces, no face, and half a second of 44.1 kHz stereo speech."""
    data = pytest.importorskip("skimage.data", reason="scikit-image gives the real photo")
    net = live_tiny_net()
    save_file({k: v.clone() for k, v in net.state_dict().items()}, root / "w.safetensors")
    astronaut = data.astronaut()
    Image.fromarray(astronaut).save(root / "astronaut.jpg")
    Image.fromarray(np.concatenate([astronaut[:300, 80:330]] * 2, axis=1)).save(root / "two.png")
    Image.new("RGB", (256, 256), (128, 128, 128)).save(root / "grey.png")
    write_wav(root / "speech.wav", speech(0.5, 44100), 44100, channels=2)
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Random tiny weights (live branches) and every input file, good and bad."""
    root = write_inputs(tmp_path_factory.mktemp("inputs"))
    write_wav(root / "short.wav", speech(0.16, 16000), 16000)
    write_wav(root / "silent.wav", np.zeros(8000), 16000)
    (root / "broken.wav").write_bytes(b"RIFF not really a wav file")
    (root / "truncated.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    return root


def animate_args(files: Path, out: Path, **overrides) -> list[str]:
    args = {"image": files / "astronaut.jpg", "audio": files / "short.wav", "emotion": "happy",
            "weights": files / "w.safetensors", "out": out, **overrides}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))] + FAST


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"image": "grey.png"}, "no face found"),
        ({"image": "two.png"}, "2 faces found"),
        ({"image": "missing.jpg"}, "cannot read image"),
        ({"audio": "silent.wav"}, "silent"),
        ({"audio": "broken.wav"}, "cannot read"),
        ({"emotion": "ecstatic"}, "unknown emotion"),
        ({"weights": "missing.safetensors"}, "checkpoint not found"),
        ({"weights": "truncated.safetensors"}, "is not a complete safetensors export"),
        ({"sampler.strength": 0}, "strength must be in (0, 1]"),
        ({"sampler.compound_regions": 1.5}, "compound_regions must be in (0, 1)"),
    ],
    ids=["no-face", "two-faces", "no-image", "silent", "unreadable-audio", "bad-emotion",
         "no-weights", "corrupt-weights", "bad-strength", "bad-compound-regions"],
)
def test_bad_input_is_one_line_and_leaves_nothing(files, tmp_path, capsys, override, message):
    override = {k: files / v if k in ("image", "audio", "weights") else v
                for k, v in override.items()}
    out_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        animate_main(animate_args(files, out_dir / "video.mp4", **override))
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_no_face_error_is_the_only_line_on_stderr_of_a_fresh_process(files, tmp_path):
    """MediaPipe's native start-up lines go past Python's sys.stderr (capsys cannot see them),
    once per process: a new interpreter, its file descriptor 2 read whole."""
    command = [sys.executable, "-m", "moee", "animate",
               *animate_args(files, tmp_path / "video.mp4", image=files / "grey.png")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 1
    assert quiet.stderr.splitlines() == [
        f"error: no face found in '{files / 'grey.png'}'; give a portrait with one clearly "
        "visible face"]
    verbose = subprocess.run([*command, "--verbose"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert verbose.stderr.splitlines()[-1] == quiet.stderr.strip()
    assert len(verbose.stderr.splitlines()) > 1  # the native lines are there to hide


@pytest.mark.slow
def test_animate_a_real_photo_end_to_end(files, tmp_path, capsys):
    out, frames_dir = tmp_path / "astronaut.mp4", tmp_path / "frames"
    args = animate_args(files, out, audio=files / "speech.wav", emotion="happily surprised",
                        frames_dir=frames_dir, **{"portrait.paste_back": "true"})
    animate_main(args + ["--sampler.steps", "2", "--sampler.clip_frames", "8",
                         "--sampler.audio_guidance", "2", "--sampler.emotion_guidance", "2"])
    assert capsys.readouterr().out.strip() == str(out)
    frames, fps = read_video(out)
    assert frames.shape == (13, 512, 512, 3) and fps == 25  # ceil(0.5 s × 25), pasted back
    assert len(list(frames_dir.glob("*.png"))) == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut.mp4", "frames"]
    sent, muxed = read_audio(files / "speech.wav"), read_audio(out)
    assert abs(len(muxed) - len(sent)) < 1024
    n = min(len(sent), len(muxed)) - 2048
    lags = range(-1024, 1025, 8)
    correlation = max(np.corrcoef(sent[1024 : 1024 + n], muxed[1024 + lag : 1024 + lag + n])[0, 1]
                      for lag in lags)
    assert correlation > 0.95


def predict(files: Path, tmp_path: Path, jobs: Path, *extra: str) -> None:
    """``moee predict`` of a jobs file with the tiny config, the random weights and 1 step."""
    override = tmp_path / "override.yaml"  # the weights file holds the VAE too
    override.write_text("model:\n  init_args:\n    net:\n      weights:\n        vae: null\n")
    moee_main(["predict", "--config", str(CONFIGS / "tiny/predict.yaml"),
               "--config", str(override),
               "--model.init_args.weights", f"[{files / 'w.safetensors'}]",
               "--model.init_args.sampler.steps", "1",
               "--model.init_args.sampler.clip_frames", "4",
               "--model.init_args.progress", "false",
               "--data.init_args.jobs", str(jobs),
               "--trainer.default_root_dir", str(tmp_path / "run"), *extra])


def test_predict_renders_the_good_jobs_and_reports_the_skipped_ones(files, tmp_path, capsys):
    jobs = tmp_path / "jobs.csv"
    image, audio = files / "astronaut.jpg", files / "short.wav"
    jobs.write_text("image,audio,emotion,output\n"
                    f"{image},{audio},sad@0.5,out/ok.mp4\n"
                    f"{files / 'missing.jpg'},{audio},sad,out/missing.mp4\n"
                    f"{image},{audio},sadd,out/typo.mp4\n"
                    f"{image},{audio},happy,out/ok2.mp4\n")
    with pytest.raises(SystemExit) as info:
        predict(files, tmp_path, jobs)
    assert info.value.code == ("error: 2 jobs skipped (see the line above); exit status 1 "
                               "(--allow_skips accepts skips)")
    report = tmp_path / "out" / "skipped_jobs.csv"
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"2 of 4 jobs written, 2 skipped (reasons: {report})"
    frames, _ = read_video(tmp_path / "out/ok.mp4")
    assert frames.shape == (4, 64, 64, 3)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ok.mp4", "ok2.mp4", "skipped_jobs.csv"]
    rows = list(csv.DictReader(report.open()))
    assert [r["row"] for r in rows] == ["2", "3"]
    assert rows[0]["image"] == str(files / "missing.jpg") and "cannot read image" in \
        rows[0]["reason"]
    assert rows[1]["emotion"] == "sadd" and "unknown emotion 'sadd'" in rows[1]["reason"]


def test_allow_skips_exits_0_and_a_clean_batch_removes_the_old_report(files, tmp_path,
                                                                       capsys):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("image,audio,emotion,output\n"
                    f"{files / 'grey.png'},{files / 'short.wav'},sad,out/no_face.mp4\n")
    predict(files, tmp_path, jobs, "--allow_skips", "true")  # no SystemExit
    report = tmp_path / "out" / "skipped_jobs.csv"
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"0 of 1 jobs written, 1 skipped (reasons: {report})"
    assert "no face found" in report.read_text()
    jobs.write_text("image,audio,emotion,output\n"
                    f"{files / 'astronaut.jpg'},{files / 'short.wav'},sad,out/ok.mp4\n")
    predict(files, tmp_path, jobs)  # nothing skipped: exit status 0, the stale report goes
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 of 1 jobs written, 0 skipped"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.mp4"]


class ParseOnlyCLI(MoEECLI):
    """Validates a config against the class signatures without building anything."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("config", ["tiny/predict.yaml", "predict.yaml"])
def test_predict_configs_parse(config):
    parsed = ParseOnlyCLI(args=["--config", str(CONFIGS / config)], run=False).config
    assert parsed.model.class_path == "moee.inference.lightning.AnimationModule"
    assert parsed.data.class_path == "moee.inference.lightning.AnimationJobs"
    assert parsed.model.init_args.weights
