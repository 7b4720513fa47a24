"""Does the denoiser use its noisy input? Its clean-latent error and what it keeps, against t.

Each held-out identity's ground-truth frame of an emotion (80 % through the clip, at the
expression's apex) is noised to t with one fixed noise draw and denoised once, in image mode,
with the identity's neutral portrait as reference, the clip's audio at that frame and the
emotion's label through its expert (no guidance). For every t it prints the model's
clean-latent MSE against the truth beside two baselines: the naive estimate ``x_t / √ᾱ_t``
(which a denoiser must beat) and the portrait itself (which an input-blind model would give),
and the probes' probability of the emotion in the decoded prediction. A denoiser that reads
its input approaches zero error as t falls and keeps the expression the input plainly shows; a
model whose error stays flat below some t, or whose prediction loses the expression at t = 50,
draws those details from its prior alone, and sampling with more steps cannot sharpen them.
``--sheet`` writes the truth over the predictions at the two lowest t (first four people).

    python benchmarks/bench_denoising.py [--weights runs/tiny/weights] \\
        [--emotions '[happy, sad]'] [--sheet denoising.png]
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import torch
from bench_stills import apex_audio, apex_frame
from jsonargparse import CLI

from moee.data.batch import from_numpy_frames
from moee.data.shards import ShardError
from moee.data.synth.sheet import write_png
from moee.emotions import BASIC_EMOTIONS, EMOTION_CLASSES, parse_emotion
from moee.evaluation.probes import load_probes
from moee.inference.animate import stage_weights
from moee.inference.conditions import emotion_inputs
from moee.inference.pipeline import MoEEPipeline
from moee.models.moee_net import MoEENetConfig
from moee.models.weights import StageWeightsError
from moee.showcase import held_out_people


@torch.no_grad()
def denoising_rows(pipeline: MoEEPipeline, probes, people: list, emotion: str,
                   timesteps: list[int]) -> tuple[list[dict], list[torch.Tensor]]:
    """Per t: the model's, the naive (``None`` where ᾱ = 0) and the portrait's MSE and the
    probes' p(emotion) of the prediction; and the decoded truth and predictions (n 3 H W)
    at every t."""
    net, objective = pipeline.net, pipeline.objective
    clips = [person.clips[emotion] for person in people]
    truth = from_numpy_frames(np.stack([clip.frames[apex_frame(clip)] for clip in clips]))
    portraits = from_numpy_frames(np.stack([person.portrait for person in people]))
    count = len(people)
    conditions = pipeline.conditioner.encode(
        portraits, audio=torch.cat([apex_audio(person, (emotion,)) for person in people]),
        expert=torch.full((count,), BASIC_EMOTIONS.index(emotion)))
    label = pipeline.conditioner.encode_emotion(
        emotion_inputs(parse_emotion(emotion), torch.zeros(1, 640), "cpu"))
    conditions = replace(conditions, emotion=label.expand(count, -1, -1))
    clean = net.vae.encode(truth[:, None])
    portrait = net.vae.encode(portraits[:, None])
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    rows, images = [], [truth]
    for t in timesteps:
        alpha = objective.scheduler.alphas_cumprod[t]
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
        predicted = net(noisy, torch.full((count,), t), conditions, image_mode=True)
        decoded = net.vae.decode(predicted)[:, 0].clamp(-1, 1)
        images.append(decoded)
        p = probes.emotion_logits(decoded).softmax(-1)[:, EMOTION_CLASSES.index(emotion)]
        naive = float((noisy / alpha.sqrt() - clean).pow(2).mean()) if alpha > 0 else None
        rows.append({"t": t, "model": float((predicted - clean).pow(2).mean()),
                     "naive": naive, "portrait": float((portrait - clean).pow(2).mean()),
                     "p": float(p.mean())})
    return rows, images


def main(weights: str = "runs/tiny/weights", emotions: list[str] | None = None,
         timesteps: list[int] | None = None, test: str = "runs/synthemo/test",
         sheet: str | None = None) -> None:
    """Print the table per emotion.

    Args:
        weights: a weights folder, or stage exports separated by commas, in loading order.
        emotions: basic emotions to read (default: happy, angry, surprised).
        timesteps: the noise levels (default 50, 100, 249, 499, 749, 999).
        test: the held-out SynthEmo split.
        sheet: PNG of the truth over the predictions at the two lowest t, per emotion.
    """
    timesteps = sorted(timesteps or [50, 100, 249, 499, 749, 999])
    emotions = emotions or ["happy", "angry", "surprised"]
    if not 0 <= timesteps[0] <= timesteps[-1] <= 999:
        sys.exit(f"error: --timesteps must lie in 0..999, got {timesteps}")
    if unknown := [e for e in emotions if e not in BASIC_EMOTIONS]:
        sys.exit(f"error: --emotions must be basic emotions ({', '.join(BASIC_EMOTIONS)}), "
                 f"got {unknown}")
    try:
        pipeline = MoEEPipeline.from_weights(MoEENetConfig(preset="tiny"),
                                             stage_weights(weights.split(",")),
                                             progress=False)
        people = held_out_people(test)
        probes = load_probes().eval()
    except (FileNotFoundError, StageWeightsError, ShardError) as error:
        sys.exit(f"error: {error}")
    pipeline.net.eval()
    panels = []
    for emotion in emotions:
        rows, images = denoising_rows(pipeline, probes, people, emotion, timesteps)
        print(f"{emotion} ({len(people)} people): t, MSE of the model / the naive x_t/√ᾱ / "
              f"the portrait, p({emotion}) of the prediction")
        for row in rows:
            naive = "–" if row["naive"] is None else f"{row['naive']:.4f}"
            print(f"  t {row['t']:4d}  {row['model']:.4f} / {naive} / "
                  f"{row['portrait']:.4f}   p {row['p']:.2f}")
        panels += [torch.cat(list(image[:4]), 2) for image in images[:3]]
    if sheet:
        grid = torch.cat(panels, 1).permute(1, 2, 0)
        write_png(sheet, ((grid + 1) * 127.5).round().byte().numpy())


if __name__ == "__main__":
    CLI(main, as_positional=False)
