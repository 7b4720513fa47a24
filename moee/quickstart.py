"""``python -m moee quickstart``: the whole system on SynthEmo, on a CPU, with no downloads.

It generates SynthEmo shards, trains the SynthEmo probes (once; they are cached), trains every
stage of the tiny model with the configs in ``configs/tiny/`` (the backbone, the six experts,
the gates), animates every held-out identity from a neutral portrait, from pure noise, under
basic, compound, text and speech conditions (:mod:`moee.showcase`), and ends with what the
probes read in those videos: emotion per condition kind, identity and lip sync. It runs from
any folder: the configs ship with the package (:data:`CONFIGS`), and everything goes under
``runs/`` of the current folder, where the configs' relative ``runs/...`` paths point too;
finished steps are skipped on a rerun.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import CLI

from moee.emotions import BASIC_EMOTIONS, parse_emotion

Precision = Literal["auto", "32-true", "bf16-mixed"]
"""The training precisions the quickstart offers (``auto``: see :func:`training_precision`)."""
Budget = Literal["tiny", "small"]
"""The quickstart's training budgets (:data:`BUDGETS`)."""
CONFIGS = Path(__file__).resolve().parent / "configs"
"""The stage configs, package data (in a checkout, a link to the repository's ``configs/``)."""
RUNS = Path("runs")
SYNTHEMO = RUNS / "synthemo"
WEIGHTS = RUNS / "tiny" / "weights"
VIDEOS = RUNS / "tiny" / "videos"
SHEET = RUNS / "tiny" / "quickstart_sheet.png"

STAGES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("backbone_image", ("backbone_image.safetensors",), "tiny/backbone_image.yaml"),
    ("backbone", ("backbone.safetensors",), "tiny/backbone.yaml"),
    ("experts", tuple(f"expert_{e}.safetensors" for e in BASIC_EMOTIONS), "tiny/experts.yaml"),
    ("speech_emotion", ("speech_emotion.safetensors",), "tiny/speech_emotion.yaml"),
    ("gating", ("gating.safetensors",), "tiny/gating.yaml"),
)
"""(name, what the stage exports under WEIGHTS, its config) for every training stage, in
order; the backbone first on stills of many clips (image mode), then on videos; the six
experts train side by side in one run; the speech-emotion stand-in is pretrained before the
gates."""
BUDGETS: dict[str, dict[str, int]] = {
    "tiny": {},
    "small": {"backbone_image": 2800, "backbone": 200, "experts": 120},
}
"""Training steps per stage of each budget (a stage it does not name keeps its config's
``max_steps``): ``tiny``, the configs' own (~26 min on 2 cores with native bf16, ~65 min in
float32); ``small``, 1.9x the image stage and twice the video and expert steps (~45-60 min in
bf16), the network and data the same. Its gates keep the tiny 120 denoising steps: 240 drifted
from the alignment warm-up (speech routed right for 0.61 of held-out clips against 0.75, speech
videos 10/24 against 14/24)."""
STAMP = "stages.json"
"""Under WEIGHTS: each trained stage's seed, precision and step budget, so that a rerun
skips only a stage trained as asked, and the layout of its exports (:data:`STAMP_FORMAT`)."""
STAMP_FORMAT = 2
"""The layout of the exports a quickstart folder holds, in its stamps. 2: the tiny
speech-emotion encoder is a classifier, and backbone exports no longer carry the random text
and speech stand-ins (2026-12-06). A folder of another layout is refused before any stage
runs, not when a later stage fails to load it."""


def _timed(timings: dict[str, float], name: str, step: Callable[[], object]) -> None:
    start = time.perf_counter()
    step()
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"[quickstart] {name}: {timings[name]:.0f} s", flush=True)


def animate_held_out(people: int | None = None, seconds: float = 0.64, steps: int | None = None,
                     strength: float = 1.0, batch: int = 8, dtype: torch.dtype = torch.float32,
                     weights: list[str] | None = None, net: dict | None = None,
                     data: Path = SYNTHEMO, out: Path | None = VIDEOS) -> list:
    """Animate the held-out identities' neutral portraits (see :mod:`moee.showcase`) with the
    tiny preset's sampling (``PRESET_SAMPLING["tiny"]``; ``steps`` if given, and ``strength``)
    and the network in ``dtype``: every basic label on every identity, the other kinds on the first
    ``people``. Up to ``batch`` videos of one portrait that route the Emotion MoE alike
    sample together (:meth:`~moee.inference.pipeline.MoEEPipeline.generate_many`), each from
    its own seed-0 noise, as it would alone. The network is ``net`` (``MoEENetConfig``
    fields, default the tiny preset) with ``weights`` (default: the quickstart's, WEIGHTS);
    the identities are those of ``data``'s test split. Write each video to ``out`` (``None``:
    nowhere) and return ``[(PlannedVideo, frames)]``."""
    from tqdm import tqdm

    from moee.data.batch import from_numpy_frames
    from moee.data.media import VIDEO_FPS
    from moee.inference.animate import stage_weights
    from moee.inference.conditions import EmotionTrack
    from moee.inference.outputs import Animation
    from moee.inference.pipeline import MoEEPipeline
    from moee.inference.sampling import PRESET_SAMPLING
    from moee.models.moee_net import MoEENetConfig
    from moee.showcase import KINDS, held_out_people, plan_videos, speech_of

    pipeline = MoEEPipeline.from_weights(
        MoEENetConfig(**(net or {"preset": "tiny"})), stage_weights(weights or [str(WEIGHTS)]),
        progress=False,
        settings=replace(PRESET_SAMPLING["tiny"], strength=strength,
                         steps=PRESET_SAMPLING["tiny"].steps if steps is None else steps))
    pipeline.net.to(dtype)
    frames = round(seconds * VIDEO_FPS)
    everyone = held_out_people(data / "test")
    plan = plan_videos(everyone, KINDS[:1]) + plan_videos(everyone[:people], KINDS[1:])
    groups: dict[tuple[str, str], list] = {}  # one portrait, one kind of routing per batch
    for video in plan:
        routing = pipeline.routing_kind(parse_emotion(video.condition))
        groups.setdefault((video.person.identity, routing), []).append(video)
    made = []
    with tqdm(total=len(plan), desc="animate", unit="video") as bar:
        for videos in (group[i : i + batch] for group in groups.values()
                       for i in range(0, len(group), batch)):
            audios = [speech_of(video, frames)[0] for video in videos]
            generated = pipeline.generate_many(
                from_numpy_frames(videos[0].person.portrait), audios,
                [EmotionTrack.parse(video.condition) for video in videos],
                [torch.Generator().manual_seed(0) for _ in videos])
            for video, audio, video_frames in zip(videos, audios, generated):
                if out is not None:
                    Animation(video_frames, audio).save(out / f"{video.name}.mp4")
                made.append((video, video_frames))
            bar.update(len(videos))
    return made


def read_held_out(made: list, probes) -> dict:
    """Score the made videos with the probes, print the figures, write the contact sheet."""
    from moee.data.synth.sheet import write_png
    from moee.evaluation.probe_judge import ProbeJudge
    from moee.showcase import score_videos, showcase_sheet

    portraits = {video.person.identity: video.person.portrait for video, _ in made}
    scores = score_videos(ProbeJudge(probes, portraits), made)
    for line in scores.lines():
        print(f"[quickstart] {line}")
    write_png(SHEET, showcase_sheet(made))
    return scores.as_dict()


def quickstart(identities: int = 120, held_out: int = 8, frames: int = 24,
               head_motion: float = 0.3, image_steps: int | None = None,
               backbone_steps: int | None = None,
               expert_steps: int | None = None, gating_steps: int | None = None,
               people: int | None = 4, seconds: float = 0.64,
               sampling_steps: int | None = None,
               strength: float = 1.0, precision: Precision = "auto", seed: int = 0,
               budget: Budget = "tiny", workers: int = 2,
               force: bool = False) -> dict[str, float]:
    """Generate SynthEmo, train the probes and every stage of the tiny model, animate the
    held-out identities and print what the probes read.

    Args:
        identities: SynthEmo training identities: the emotions must carry over to people the
            model never saw, so many people with short clips rather than a few with long ones.
        held_out: SynthEmo validation and test identities (each).
        frames: frames per SynthEmo clip.
        head_motion: SynthEmo's head sway (1: lively; the tiny model learns emotion faster
            from a stiller head, as MEAD's studio recordings are).
        image_steps, backbone_steps, expert_steps, gating_steps: override the budget's
            ``max_steps`` (image-mode backbone, video backbone, experts, gates; the gating
            stage's alignment warm-up comes before its steps).
        people: held-out identities animated under the compound, text and speech conditions
            (``None``: all); the basic labels animate every test identity.
        seconds: length of each video.
        sampling_steps: DPM-Solver++ steps per clip (default: the tiny preset's, 4).
        strength: 1 samples from pure noise (the paper's way); below 1 starts from the noised
            portrait (``SamplerSettings.strength``).
        precision: the training stages' ``trainer.precision``; ``auto``: ``bf16-mixed`` on a
            CPU that computes bf16 natively (AMX or AVX512-BF16: 1.5x faster image steps),
            else ``32-true``. With ``bf16-mixed`` the videos are sampled with bf16 weights
            too (2x faster; the same probe readings as float32 on the validation people).
        seed: seed of every training stage (initial weights, data order, windows, noise):
            the SynthEmo data, the probes and the videos' sampling noise stay the same, so
            two seeds (each in its own folder) differ by their training alone.
        budget: the training steps of every stage (:data:`BUDGETS`).
        workers: processes for data generation.
        force: redo steps whose outputs exist. Without it a stage whose exports exist is
            skipped if it was trained with this seed, precision and steps, and refused with
            one line if not.

    Returns:
        Wall time in seconds per step.
    """
    from moee.cli import main as moee
    from moee.errors import BadInputError
    from moee.evaluation.probe_training import train_probes
    from moee.evaluation.probes import cache_path, load_probes
    from moee.utils import write_text

    asked = {"backbone_image": image_steps, "backbone": backbone_steps,
             "experts": expert_steps, "gating": gating_steps}
    for option, steps in zip(("image", "backbone", "expert", "gating", "sampling"),
                             (*asked.values(), sampling_steps)):
        if steps is not None and steps < 1:  # found before the stages run, not after them
            raise BadInputError(f"--{option}_steps must be at least 1 (leave it out for the "
                                f"recipe's), got {steps}")
    # Stages run in this process through the CLI's own entry point; Lightning warns about that.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    timings: dict[str, float] = {}
    if force or not (SYNTHEMO / "test" / "manifest.json").is_file():
        _timed(timings, "synthemo", lambda: moee([
            "synth", "--out", str(SYNTHEMO), "--train", str(identities), "--val", str(held_out),
            "--test", str(held_out), "--frames", str(frames), "--head_motion", str(head_motion),
            "--workers", str(workers)]))
    if not cache_path().is_file():
        _timed(timings, "probes", lambda: train_probes(threads=torch.get_num_threads(),
                                                       **QUICK_PROBES))
    precision = training_precision(precision)
    print(f"[quickstart] training precision: {precision}")
    stamps = {} if force else read_stamps(WEIGHTS)
    for name, exports, config in STAGES:
        steps = asked[name] if asked.get(name) is not None else BUDGETS[budget].get(name)
        recipe = {"seed": seed, "precision": precision, "max_steps": steps}
        if not force and all((WEIGHTS / export).exists() for export in exports):
            if stamps.get(name, recipe) != recipe:
                raise BadInputError(
                    f"{WEIGHTS}/{exports[0]} was trained with {stamps[name]}, not {recipe}: "
                    "run in another folder, or add --force to retrain")
            print(f"[quickstart] {name}: already trained ({WEIGHTS}/{exports[0]}...)")
            continue
        extra = ["--trainer.precision", precision, "--seed_everything", str(seed),
                 "--data.init_args.seed", str(seed)]
        extra += ["--trainer.max_steps", str(steps)] if steps is not None else []
        _timed(timings, name, lambda c=config, e=extra: moee(
            ["fit", "--config", str(CONFIGS / c), *e]))
        stamps[name] = recipe
        write_text(WEIGHTS / STAMP, json.dumps({"format": STAMP_FORMAT, **stamps}, indent=2))
    made: list = []
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    _timed(timings, "animate", lambda: made.extend(animate_held_out(
        people, seconds, sampling_steps, strength, dtype=dtype)))
    scores = read_held_out(made, load_probes())
    record = RUNS / "tiny" / "quickstart.json"
    if record.is_file():  # a rerun keeps the times of the steps it skipped
        timings = {**json.loads(record.read_text())["seconds"], **timings}
    write_text(record, json.dumps({"seconds": timings, "budget": budget, "seed": seed,
                                   **scores}, indent=2))
    print(f"[quickstart] videos:  {VIDEOS}/ ({len(made)} mp4 with audio); sheet: {SHEET}")
    print(f"[quickstart] weights: {WEIGHTS}/")
    print(f"[quickstart] logs:    tensorboard --logdir {RUNS / 'tiny'}")
    print(f"[quickstart] total {sum(timings.values()) / 60:.1f} min; "
          f"figures in {RUNS / 'tiny' / 'quickstart.json'}")
    return timings


def read_stamps(weights: Path) -> dict[str, dict]:
    """{stage: stamp} of the stages trained in the quickstart weights folder ``weights``
    (:data:`STAMP`; none before any). Exports of another layout than :data:`STAMP_FORMAT`
    (a folder stamped before it, or with exports and no stamps) are one-line
    :class:`~moee.errors.BadInputError`."""
    from moee.errors import BadInputError

    path = weights / STAMP
    try:
        stamps = json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, OSError) as error:
        raise BadInputError(f"{path} is unreadable ({error}): delete it, or add --force to "
                            "retrain") from None
    exported = any(weights.glob("*.safetensors"))
    layout = stamps.pop("format", 1 if stamps or exported else STAMP_FORMAT)
    if layout != STAMP_FORMAT:
        raise BadInputError(f"{weights} holds exports of an earlier MoEE (layout {layout}, now "
                            f"{STAMP_FORMAT}) that it can no longer load: run in another "
                            "folder, or add --force to retrain")
    return stamps


def training_precision(choice: Precision) -> str:
    """Lightning's ``precision`` for ``choice``; ``auto`` picks ``bf16-mixed`` where the CPU
    has native bf16 arithmetic (AMX tiles or AVX512-BF16, which oneDNN's convolutions and
    matrix products use) and ``32-true`` elsewhere, where bf16 would be emulated and slower."""
    if choice != "auto":
        return choice
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return "bf16-mixed" if native else "32-true"


QUICK_PROBES = dict(train_identities=200, frames_per_identity=24, expression_steps=900,
                    identity_steps=200)
"""The quickstart's probe budget (``python -m moee synth probes`` trains the full one)."""


def main(argv: list[str]) -> None:
    """``python -m moee quickstart [--identities N] ...``"""
    from moee.errors import MoEEError
    from moee.models.weights import StageWeightsError

    try:
        CLI(quickstart, args=argv, prog="moee quickstart")
    except StageWeightsError as error:  # e.g. weights of an older recipe under runs/tiny/weights
        sys.exit(f"error: {error} (python -m moee quickstart --force retrains every stage)")
    except MoEEError as error:  # e.g. a test split without every emotion of each identity
        sys.exit(f"error: {error}")
