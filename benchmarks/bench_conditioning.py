"""What does a trained model use? Its denoising loss when one condition is swapped for another.

For held-out SynthEmo identities, every basic-emotion clip is noised at several timesteps and
denoised as the first clip of an animation would be: the reference is a *neutral* frame of the
same person (the portrait), the motion frames are that portrait, the audio is the clip's own and
the emotion is the clip's label on its expert's single-expert path. Then each condition is
swapped, one at a time, with the same noise, and the relative change of the latent loss is
printed per timestep:

===========================  ==============================================================
swap                         a model that uses the condition...
===========================  ==============================================================
reference: the clip's own    ...gains (−) from a reference showing the target expression
reference: another person    ...loses (+) with the wrong identity
reference: dropped           ...loses (+) without any reference
audio: another clip's        ...loses (+) with another person's speech
emotion: another expert      ...loses (+) with the wrong emotion (the experts are specific)
emotion: null condition      ...loses (+) with the guidance branch's null emotion
emotion: no MoE              ...loses (+) without the experts at all
===========================  ==============================================================

A condition whose swaps move the loss by well under 1 % is one the model has not learnt to use.

    python benchmarks/bench_conditioning.py [--weights runs/tiny/weights] [--identities 4]
"""

from __future__ import annotations

import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from jsonargparse import CLI  # noqa: E402
from tqdm import tqdm  # noqa: E402

from moee.data.batch import from_numpy_frames  # noqa: E402
from moee.data.sampling import MOTION_FRAMES, clip_track, window_audio  # noqa: E402
from moee.data.shards import Clip, decode_clip, iter_raw_samples, shard_urls  # noqa: E402
from moee.emotions import BASIC_EMOTIONS, NEUTRAL, parse_emotion  # noqa: E402
from moee.inference.animate import stage_weights  # noqa: E402
from moee.inference.conditions import emotion_inputs  # noqa: E402
from moee.inference.pipeline import MoEEPipeline  # noqa: E402
from moee.models.conditioner import Conditions  # noqa: E402
from moee.models.moee_net import MoEENetConfig  # noqa: E402

SWAPS = ("reference: the clip's own", "reference: another person", "reference: dropped",
         "audio: another clip's", "emotion: another expert", "emotion: null condition",
         "emotion: no MoE")


def load_clips(data: str) -> dict[tuple[str, str], Clip]:
    """{(identity, emotion): clip} of a SynthEmo split."""
    return {(clip.meta.identity, clip.meta.emotion): clip
            for url in shard_urls(data) for clip in map(decode_clip, iter_raw_samples(url))}


class ConditionSwaps:
    """Latent losses of one trained network under the full condition and each swap."""

    def __init__(self, pipeline: MoEEPipeline, frames: int) -> None:
        self.net, self.objective, self.frames = pipeline.net, pipeline.objective, frames
        self.conditioner = pipeline.conditioner
        self.emotion = {}
        for name in BASIC_EMOTIONS:
            condition = emotion_inputs(parse_emotion(name), torch.zeros(1, frames * 640),
                                       torch.device("cpu"))
            self.emotion[name] = self.conditioner.encode_emotion(condition)

    def encode(self, frame: np.ndarray, clip: Clip, start: int) -> Conditions:
        """The conditions of a reference frame (which is also the motion frames, as in a first
        clip) and the audio of the window of ``clip`` starting at ``start``."""
        image = from_numpy_frames(frame[None])
        latent = self.net.encode_frames(image[:, None], sample=False)
        audio = torch.from_numpy(window_audio(clip_track(clip), start, self.frames))[None]
        return self.conditioner.encode(image, latent.repeat(1, MOTION_FRAMES, 1, 1, 1),
                                       reference_latent=latent[:, 0], audio=audio)

    def conditions(self, clip: Clip, portrait: np.ndarray, stranger: np.ndarray,
                   other_audio: Clip, emotion: str, start: int) -> dict[str, Conditions]:
        """The full condition and every swap."""
        expert = BASIC_EMOTIONS.index(emotion)
        wrong = (expert + len(BASIC_EMOTIONS) // 2) % len(BASIC_EMOTIONS)
        full = replace(self.encode(portrait, clip, start), emotion=self.emotion[emotion],
                       expert=expert)
        middle = clip.frames[start + self.frames // 2]
        return {
            "full": full,
            SWAPS[0]: replace(full, reference=self.encode(middle, clip, start).reference),
            SWAPS[1]: replace(full, reference=self.encode(stranger, clip, start).reference),
            SWAPS[2]: replace(full, drop_reference=torch.tensor([True])),
            SWAPS[3]: replace(full, audio=self.encode(portrait, other_audio, start).audio),
            SWAPS[4]: replace(full, emotion=self.emotion[BASIC_EMOTIONS[wrong]], expert=wrong),
            SWAPS[5]: replace(full, drop_emotion=torch.tensor([True])),
            SWAPS[6]: replace(full, emotion=None, expert=None),
        }

    def losses(self, latents: torch.Tensor, conditions: dict[str, Conditions],
               timesteps: list[int],
               generator: torch.Generator) -> dict[str, np.ndarray]:
        """{name: loss per timestep}, every condition denoising the same noisy latents."""
        out = {name: np.zeros(len(timesteps)) for name in conditions}
        for j, t in enumerate(timesteps):
            noise = torch.randn(latents.shape, generator=generator)
            step = torch.tensor([t])
            noisy = self.objective.add_noise(latents, noise, step)
            target = self.objective.target(latents, noise, step)
            for name, condition in conditions.items():
                out[name][j] = (self.net(noisy, step, condition) - target).square().mean().item()
        return out


@torch.no_grad()
def main(weights: str = "runs/tiny/weights", data: str = "runs/synthemo/test",
         identities: int = 4, frames: int = 8, timesteps: tuple[int, ...] = (100, 300, 500, 700,
                                                                              900),
         seed: int = 0) -> dict[str, np.ndarray]:
    """Print the relative loss change of every swap at every timestep; return them.

    Args:
        weights: folder of the tiny model's stage exports.
        data: SynthEmo shards with neutral and basic-emotion clips of each identity.
        identities: held-out people scored (each with its six basic-emotion clips).
        frames: window length (the clip length the model was trained on).
        timesteps: diffusion timesteps at which the loss is measured.
        seed: noise seed.
    """
    for folder, what in ((weights, "trained tiny model"), (data, "SynthEmo split")):
        if not os.path.isdir(folder):
            raise SystemExit(f"error: no {what} at {folder!r}: run `python -m moee quickstart` "
                             "first or pass its folder")
    net = MoEENetConfig(preset="tiny")
    swaps = ConditionSwaps(MoEEPipeline.from_weights(net, stage_weights([weights]),
                                                     progress=False), frames)
    clips = load_clips(data)
    people = sorted({person for person, emotion in clips if emotion == NEUTRAL})[:identities]
    if len(people) < 2:
        raise SystemExit(f"error: {data} needs neutral clips of at least 2 identities")
    generator = torch.Generator().manual_seed(seed)
    steps = list(timesteps)
    totals: dict[str, np.ndarray] = {}
    jobs = [(p, e) for p in people for e in BASIC_EMOTIONS if (p, e) in clips]
    for person, emotion in tqdm(jobs, desc="clips", unit="clip"):
        clip = clips[(person, emotion)]
        start = (len(clip.frames) - frames) // 2  # past the onset: the expression is shown
        stranger = people[(people.index(person) + 1) % len(people)]
        conditions = swaps.conditions(
            clip, clips[(person, NEUTRAL)].frames[start], clips[(stranger, NEUTRAL)].frames[start],
            clips[(stranger, NEUTRAL)], emotion, start)
        latents = swaps.net.encode_frames(
            from_numpy_frames(clip.frames[start:start + frames])[None], sample=False)
        for name, loss in swaps.losses(latents, conditions, steps, generator).items():
            totals[name] = totals.get(name, 0) + loss
    relative = {name: totals[name] / totals["full"] - 1 for name in SWAPS}
    print_table(steps, totals["full"] / len(jobs), relative)
    return relative


def print_table(timesteps: list[int], full: np.ndarray,
                relative: dict[str, np.ndarray]) -> None:
    """Markdown: the full condition's loss, then each swap's relative change, per timestep."""
    print("| condition | " + " | ".join(f"t={t}" for t in timesteps) + " |")
    print("|---|" + "---:|" * len(timesteps))
    print("| full (loss) | " + " | ".join(f"{v:.4f}" for v in full) + " |")
    for name, values in relative.items():
        print(f"| {name} | " + " | ".join(f"{v:+.1%}" for v in values) + " |")


if __name__ == "__main__":
    CLI(main)
