"""Does a stage's export draw the asked emotion on a still? The fast check between recipe runs.

For every held-out SynthEmo identity, its neutral portrait is animated as one still per basic
label, from pure noise, in image mode (no temporal layers: what the image-mode backbone stage
trains), hearing the audio of that emotion's clip at its apex frame, with emotion guidance
against the backbone alone. The probes then read each still as the quickstart reads its videos
(a face of the right person, the asked emotion), and the confusion of asked vs read emotions is
printed, then each emotion's pixel error against its clip's apex frame by face region
(``bench_regions.py``: brows, eyes, mouth, chin, rest), beside the same error of the portrait
itself, printed first (a still that moved nothing: how far each region has to go). Each
person is drawn from ``--noise_seeds`` noise draws (3): one draw reads several stills of 48
above or below another (46, 39 and 35 of 48 for seeds 0, 1, 2 of one export), and happy, the
faintest emotion, the most. It takes ~20 s on 2 cores (three draws), against ~2 minutes for
the quickstart's videos, so one image-stage run (or any export carrying the experts) can be
judged at once; a contact sheet (portrait row, then a row per emotion, the first draw) shows
what the numbers mean.

    python benchmarks/bench_stills.py runs/tiny/weights/backbone_image.safetensors \\
        [--guidance 2 5] [--steps 8] [--noise_seeds 3] [--sheet stills.png]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace

import numpy as np
import torch
from bench_regions import REGIONS, region_errors

from moee.data.batch import from_numpy_frames
from moee.data.sampling import clip_track, window_audio
from moee.data.shards import Clip, ShardError
from moee.data.synth.sheet import write_png
from moee.emotions import BASIC_EMOTIONS, EMOTION_CLASSES, parse_emotion
from moee.evaluation.probe_judge import ProbeJudge
from moee.evaluation.probes import load_probes
from moee.inference.conditions import emotion_inputs
from moee.inference.pipeline import MoEEPipeline
from moee.inference.sampling import Guidance, SamplerSettings
from moee.models.moee_net import MoEENetConfig
from moee.models.weights import StageWeightsError
from moee.showcase import Person, held_out_people


@torch.no_grad()
def draw_stills(pipeline: MoEEPipeline, portrait: torch.Tensor, latents: torch.Tensor,
                audio: torch.Tensor, guidance: float, seed: int = 0) -> np.ndarray:
    """One still per emotion latent (e m c) of ``portrait`` (3 H W), expert i for row i,
    hearing row i of ``audio`` (e, 5 * 640), from the noise of ``seed`` (one draw shared by
    the rows), with the pipeline's sampler: ``(e, H, W, 3) uint8``."""
    net, scheduler = pipeline.net, pipeline.scheduler
    count = latents.shape[0]
    conditions = pipeline.conditioner.encode(portrait[None].expand(count, -1, -1, -1),
                                             audio=audio, expert=torch.arange(count))
    both = replace(conditions.repeat(2), emotion=latents.repeat(2, 1, 1),  # backbone alone,
                   drop_emotion=torch.tensor([True] * count + [False] * count))  # with experts
    mix = Guidance(guidance, guidance)  # equal scales: one unconditional and one full branch
    scheduler.set_timesteps(pipeline.settings.steps)
    shape = (1, 1, *conditions.reference.latent.shape[1:])
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x = noise.expand(count, -1, -1, -1, -1) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = net(scheduler.scale_model_input(x, t).repeat(2, 1, 1, 1, 1), t.repeat(2 * count),
                  both, image_mode=True)
        x = scheduler.step(mix.combine(out.unflatten(0, (2, count))), t, x).prev_sample
    frames = net.vae.decode(x)[:, 0].clamp(-1, 1)
    return ((frames + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def apex_frame(clip) -> int:
    """The index of a clip's apex frame, 80 % through (SynthEmo's expression has set in)."""
    return int(0.8 * len(clip.frames))


def apex_audio(person: Person, emotions: tuple[str, ...] = BASIC_EMOTIONS) -> torch.Tensor:
    """(e, 5 * 640): each emotion's clip's audio around its apex frame."""
    windows = [window_audio(clip_track(clip), apex_frame(clip), 1)
               for clip in (person.clips[emotion] for emotion in emotions)]
    return torch.from_numpy(np.stack(windows)).float()


def apex_region_errors(still: np.ndarray, clip: Clip) -> dict[str, float]:
    """Pixel error of one still (H W 3) against ``clip``'s apex frame, by face region."""
    apex = slice(apex_frame(clip), apex_frame(clip) + 1)
    return region_errors(still[None], clip.frames[apex], clip.landmarks[apex])


def print_region_table(title: str, errors: dict[str, list[dict[str, float]]]) -> None:
    """A row per emotion: its mean error per region over the stills in ``errors[emotion]``."""
    print(title)
    print(" " * 44 + " ".join(f"{r:>6}" for r in REGIONS))
    for emotion, rows_of_errors in errors.items():
        print(f"{emotion:>43} " + " ".join(
            f"{np.mean([e[r] for e in rows_of_errors]):6.1f}" for r in REGIONS))


@torch.no_grad()
def basic_emotion_latents(pipeline: MoEEPipeline) -> torch.Tensor:
    """(e m c): the emotion latents of each basic label, in :data:`BASIC_EMOTIONS` order."""
    silence = torch.zeros(1, 640)
    encode = pipeline.conditioner.encode_emotion
    return torch.cat([encode(emotion_inputs(parse_emotion(e), silence, "cpu"))
                      for e in BASIC_EMOTIONS])


def read_stills(args: argparse.Namespace) -> None:
    """Draw and read the stills at each guidance scale; print the figures (and the sheet)."""
    pipeline = MoEEPipeline.from_weights(
        MoEENetConfig(preset="tiny"), args.weights, progress=False,
        settings=SamplerSettings(sampler=args.sampler, steps=args.steps))
    latents = basic_emotion_latents(pipeline)
    people = held_out_people(args.test)
    judge = ProbeJudge(load_probes(), {p.identity: p.portrait for p in people})
    print_region_table("the portrait itself against the apex frame (a still that moved nothing):",
                       {e: [apex_region_errors(p.portrait, p.clips[e]) for p in people]
                        for e in BASIC_EMOTIONS})
    for guidance in args.guidance:
        confusion = np.zeros((len(BASIC_EMOTIONS), len(EMOTION_CLASSES)), int)
        errors: dict[str, list[dict[str, float]]] = {emotion: [] for emotion in BASIC_EMOTIONS}
        right = same_person = 0
        rows: list[list[np.ndarray]] = [[p.portrait for p in people]]
        rows += [[] for _ in BASIC_EMOTIONS]
        for seed, person in itertools.product(range(args.noise_seeds), people):
            stills = draw_stills(pipeline, from_numpy_frames(person.portrait), latents,
                                 apex_audio(person), guidance, seed)
            for i, emotion in enumerate(BASIC_EMOTIONS):
                reading = judge.read(stills[i:i + 1], person.identity)
                confusion[i, int(reading.probabilities.argmax())] += 1
                right += judge.reads_as(reading, emotion, person.identity)
                same_person += reading.identity == person.identity
                errors[emotion].append(apex_region_errors(stills[i], person.clips[emotion]))
                if seed == 0:
                    rows[i + 1].append(stills[i])
        total = args.noise_seeds * len(people) * len(BASIC_EMOTIONS)
        print(json.dumps({"guidance": guidance, "emotion_read": f"{right}/{total}",
                          "identity": f"{same_person}/{total}"}))
        print("asked \\ read: " + " ".join(e[:5] for e in EMOTION_CLASSES))
        for emotion, counts in zip(BASIC_EMOTIONS, confusion):
            print(f"{emotion:>12} " + " ".join(f"{c:5d}" for c in counts))
        print_region_table("pixel error against the apex frame (0-255):", errors)
        if args.sheet:
            write_png(args.sheet, np.concatenate([np.concatenate(r, 1) for r in rows], 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", nargs="+", help="stage exports, loaded in order")
    parser.add_argument("--test", default="runs/synthemo/test", help="held-out SynthEmo split")
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sampler", default="dpmpp")
    parser.add_argument("--noise_seeds", type=int, default=3,
                        help="noise draws per person (the sheet shows the first)")
    parser.add_argument("--sheet", default=None, help="PNG of the last guidance's stills")
    args = parser.parse_args()
    if args.noise_seeds < 1:
        parser.error(f"--noise_seeds must be at least 1, got {args.noise_seeds}")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    torch.manual_seed(0)
    try:  # missing weights, probes or split; exports of other runs: one line, no traceback
        read_stills(args)
    except (FileNotFoundError, StageWeightsError, ShardError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
