"""``python -m moee quickstart``: the whole system on SynthEmo, on a CPU, with no downloads.

It generates SynthEmo shards, trains every stage of the tiny model with the configs in
``configs/tiny/`` (its autoencoder, the backbone, the six experts, the gates), animates held-out
SynthEmo portraits with a basic, a compound, a text and an audio-only emotion, and — when the
SynthEmo probes are trained (``python -m moee synth probes``) — scores the emotion of the
videos. Everything goes under ``runs/`` of the current folder (the repository root, where the
configs' relative paths point); finished steps are skipped on a rerun.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from jsonargparse import CLI

from moee.emotions import BASIC_EMOTIONS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = Path("runs")
SYNTHEMO = RUNS / "synthemo"
WEIGHTS = RUNS / "tiny" / "weights"

VIDEOS = RUNS / "tiny" / "videos"

STAGES: tuple[tuple[str, str], ...] = (
    ("vae", "tiny/vae.yaml"),
    ("backbone.safetensors", "tiny/backbone.yaml"),
    *((f"expert_{e}.safetensors", f"tiny/expert_{e}.yaml") for e in BASIC_EMOTIONS),
    ("gating.safetensors", "tiny/gating.yaml"),
)
"""(what the stage exports under WEIGHTS, its config) for every training stage, in order."""

EMOTIONS: dict[str, str] = {
    "happy": "happy",
    "happily_surprised": "happily surprised",
    "text": "text:the brows are raised high and the jaw drops open",
    "speech": "speech",
}
"""The conditions the quickstart animates: basic, compound, text, and the speech's own tone."""


def _timed(timings: dict[str, float], name: str, step: Callable[[], object]) -> None:
    start = time.perf_counter()
    step()
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"[quickstart] {name}: {timings[name]:.0f} s", flush=True)


def animate_test_portraits(portraits: int = 2, steps: int = 8, seconds: float = 1.28,
                           strength: float = 1.0) -> list[Path]:
    """Animate the first frame of held-out SynthEmo clips with their audio (the first
    ``seconds``) in each of EMOTIONS; ``strength`` as in :class:`SamplerSettings`."""
    from moee.data.media import AUDIO_RATE
    from moee.data.shards import decode_clip, iter_raw_samples, shard_urls
    from moee.inference.animate import stage_weights
    from moee.inference.conditions import EmotionTrack
    from moee.inference.pipeline import Animation, MoEEPipeline, SamplerSettings
    from moee.models.moee_net import MoEENetConfig
    from moee.models.pretrained import WeightSources

    net = MoEENetConfig(preset="tiny", weights=WeightSources(vae=str(WEIGHTS / "vae")))
    pipeline = MoEEPipeline.from_weights(net, stage_weights([str(WEIGHTS)]), size=64,
                                         settings=SamplerSettings(steps=steps, clip_frames=8,
                                                                  strength=strength))
    clips, seen = [], set()
    for url in shard_urls(SYNTHEMO / "test"):
        for raw in iter_raw_samples(url):
            clip = decode_clip(raw)
            if clip.meta.identity not in seen and len(clips) < portraits:
                seen.add(clip.meta.identity)
                clips.append(clip)
    written = []
    for clip in clips:
        reference = torch.from_numpy(clip.frames[0]).permute(2, 0, 1).float() / 127.5 - 1
        audio = clip.audio[: round(seconds * AUDIO_RATE)]
        for name, spec in EMOTIONS.items():
            frames = pipeline.generate(reference, audio, EmotionTrack.parse(spec),
                                       torch.Generator().manual_seed(0))
            path = VIDEOS / f"{clip.meta.identity}_{name}_spoken-{clip.meta.emotion}.mp4"
            written.append(Animation(frames, audio).save(path.with_name(
                path.name.replace(" ", "-"))))
    return written


def requested_emotion(video: Path) -> str:
    """The emotion a quickstart video asks for, from its name ``<id>_<condition>_spoken-<e>``:
    the text prompt describes surprise; ``speech`` asks for the emotion the clip was spoken in."""
    from moee.emotions import canonical_emotion_name

    condition, spoken = video.stem.split("_", 1)[1].rsplit("_spoken-", 1)
    if condition == "text":
        return "surprised"
    return canonical_emotion_name(spoken if condition == "speech" else condition)


def score_videos(videos: list[Path]) -> dict[str, float] | None:
    """Emotion accuracy of the videos under the SynthEmo probes (None if they are not trained).

    A video counts as right when the probe's frame-averaged emotion is the requested one; for
    ``speech`` the requested emotion is the one the clip was spoken with.
    """
    from moee.data.media import read_video
    from moee.data.synth.probes import load_probes
    from moee.emotions import EMOTION_CLASSES

    try:
        probes = load_probes(size=64)
    except FileNotFoundError as error:
        print(f"[quickstart] not scored: {error}")
        return None
    hits: dict[str, list[bool]] = {}
    for path in videos:
        name = path.stem.split("_", 1)[1].rsplit("_spoken-", 1)[0]
        frames, _ = read_video(path)
        images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            predicted = probes.emotion_logits(images).softmax(-1).mean(0).argmax().item()
        hits.setdefault(name, []).append(EMOTION_CLASSES[predicted] == requested_emotion(path))
    return {name: sum(h) / len(h) for name, h in hits.items()}


def quickstart(identities: int = 40, frames: int = 50, vae_steps: int | None = None,
               backbone_steps: int | None = None, expert_steps: int | None = None,
               gating_steps: int | None = None, portraits: int = 2, sampling_steps: int = 8,
               strength: float = 0.7, workers: int = 2, force: bool = False) -> dict[str, float]:
    """Generate SynthEmo, train every stage of the tiny model, and animate test portraits.

    Args:
        identities: SynthEmo training identities (validation and test get a fifth each).
        frames: frames per SynthEmo clip.
        vae_steps, backbone_steps, expert_steps, gating_steps: override the configs'
            ``max_steps``.
        portraits: held-out identities animated in each of the four emotion conditions.
        sampling_steps: DPM-Solver++ steps per clip.
        strength: start sampling from the reference noised to this share of the schedule
            (1: from pure noise, as the paper; the tiny model's few minutes of training
            cannot rebuild a face from pure noise, see README).
        workers: processes for data generation.
        force: redo steps whose outputs exist.

    Returns:
        Wall time in seconds per step.
    """
    from moee.cli import main as moee

    # Stages run in this process through the CLI's own entry point; Lightning warns about that.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    timings: dict[str, float] = {}
    if force or not (SYNTHEMO / "test" / "manifest.json").is_file():
        held_out = max(2, identities // 5)
        _timed(timings, "synthemo", lambda: moee([
            "synth", "--out", str(SYNTHEMO), "--train", str(identities), "--val", str(held_out),
            "--test", str(held_out), "--frames", str(frames), "--workers", str(workers)]))
    overrides = {"vae": vae_steps, "backbone": backbone_steps, "gating": gating_steps}
    for export, config in STAGES:
        name = export.removesuffix(".safetensors")
        if not force and (WEIGHTS / export).exists():
            print(f"[quickstart] {name}: already trained ({WEIGHTS / export})")
            continue
        steps = overrides.get(name, expert_steps)
        extra = ["--trainer.max_steps", str(steps)] if steps else []
        _timed(timings, name, lambda c=config, e=extra: moee(
            ["fit", "--config", str(CONFIGS / c), *e]))
    videos: list[Path] = []
    _timed(timings, "animate", lambda: videos.extend(animate_test_portraits(
        portraits, sampling_steps, strength=strength)))
    scores = score_videos(videos)
    record = RUNS / "tiny" / "quickstart.json"
    if record.is_file():  # a rerun keeps the times of the steps it skipped
        timings = {**json.loads(record.read_text())["seconds"], **timings}
    partial = record.with_name(f".{record.name}.partial")
    partial.write_text(json.dumps({"seconds": timings, "emotion_accuracy": scores}, indent=2))
    partial.replace(record)
    print(f"[quickstart] videos:  {VIDEOS}/ ({len(videos)} mp4 with audio)")
    print(f"[quickstart] weights: {WEIGHTS}/")
    print(f"[quickstart] logs:    tensorboard --logdir {RUNS / 'tiny'}")
    if scores is not None:
        print(f"[quickstart] emotion accuracy under the SynthEmo probes: {scores}")
    print(f"[quickstart] total {sum(timings.values()) / 60:.1f} min; "
          f"figures in {RUNS / 'tiny' / 'quickstart.json'}")
    return timings


def main(argv: list[str]) -> None:
    """``python -m moee quickstart [--identities N] ...``"""
    from moee.stages.base import StageWeightsError

    try:
        CLI(quickstart, args=argv, prog="moee quickstart")
    except StageWeightsError as error:  # e.g. weights of an older recipe under runs/tiny/weights
        sys.exit(f"error: {error} (python -m moee quickstart --force retrains every stage)")
