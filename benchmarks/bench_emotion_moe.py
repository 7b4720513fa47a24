"""Emotion MoE speed: fused six-expert path vs per-expert loop, single expert vs cross-attention.

Prints, per U-Net level of the tiny and SD-1.5 denoisers (their real widths, head and emotion
token counts; ``b`` = batch x frames), the median time of the per-expert loop, the fused path
in its batched and absorbed forms (see ``moee.models.emotion_moe``) and the form the fused path
picks, forward and forward+backward; then one plain cross-attention of the same width against
the single-expert path. Each denoiser's total weights the levels by how many Emotion MoE layers
run there. The design's goals: fused >= 2x faster than the loop; single-expert <= 1.15x one
plain cross-attention.

    python benchmarks/bench_emotion_moe.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
from timing import median_time

from moee.models import emotion_moe
from moee.models.emotion_moe import CrossAttentionExpert, EmotionMoE

LEVELS = {  # name: (b, frames, tokens n, width d, emotion width c, emotion tokens m, heads,
    #               MoE layers); the b rows are b / frames clips sharing one emotion context each
    "tiny": {"8x8": (32, 8, 64, 64, 32, 8, 4, 4)},
    "sd15": {
        "64x64": (8, 8, 4096, 320, 768, 32, 8, 5),
        "32x32": (8, 8, 1024, 640, 768, 32, 8, 5),
        "16x16": (8, 8, 256, 1280, 768, 32, 8, 5),
        "8x8": (8, 8, 64, 1280, 768, 32, 8, 1),
    },
}
"""Tiny: batch 4 x 8 frames, all MoE layers at 8x8 latents (16x16 is resnet-only). SD-1.5: 8 frames
(half a clip); 2 down + 3 up layers at each of the three wide levels, 1 in the mid block."""


def step(module, x, context, backward: bool, form: str | None = None, **kwargs):
    """One call of ``module`` (the fused form forced when ``form`` is given); with
    ``backward`` also the backward of a scalar loss."""

    def call():
        if backward:
            module.zero_grad(set_to_none=True)
            module(x, context, **kwargs).sum().backward()
        else:
            with torch.no_grad():
                module(x, context, **kwargs)

    def run():
        if form is None:
            return call()
        with mock.patch.object(emotion_moe, "absorbed_is_cheaper",
                               lambda *_: form == "absorbed"):
            return call()

    return run


def measure(shape, backward: bool, repeats: int) -> dict[str, float]:
    """Seconds of every path at one level's shape."""
    b, frames, n, d, c, m, heads, _ = shape
    moe = EmotionMoE(d, c, heads=heads, zero_init_output=False)
    plain = CrossAttentionExpert(d, c, heads, d // heads)
    x, context = torch.randn(b, n, d), torch.randn(b // frames, m, c)
    moe.fused = False
    times = {"loop": median_time(step(moe, x, context, backward), repeats)}
    moe.fused = True
    for form in ("batched", "absorbed"):
        times[form] = median_time(step(moe, x, context, backward, form), repeats)
    per_row = context.repeat_interleave(frames, 0)
    times["xattn"] = median_time(step(plain, x, per_row, backward), repeats)
    times["single"] = median_time(step(moe, x, context, backward, expert=3), repeats)
    times["picked"] = times["absorbed" if emotion_moe.absorbed_is_cheaper(
        n, m, d, heads, d // heads, frames) else "batched"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    columns = ("loop", "batched", "absorbed", "picked", "loop/fused", "xattn", "single", "s/x")
    header = f"{'level':12} {'pass':7} " + " ".join(f"{c:>10}" for c in columns)
    print(f"threads={args.threads}, median of {args.repeats} runs, seconds")
    print(header)
    print("-" * len(header))
    for preset, levels in LEVELS.items():
        for backward in (False, True):
            total = dict.fromkeys(("loop", "batched", "absorbed", "picked", "xattn", "single"), 0.0)
            for level, shape in levels.items():
                times = measure(shape, backward, args.repeats)
                for key in total:
                    total[key] += shape[-1] * times[key]
                print(row(f"{preset} {level}", backward, times))
            print(row(f"{preset} U-Net", backward, total))
    print("loop/fused = loop / picked (goal >= 2); s/x = single / xattn (goal <= 1.15)")


def row(name: str, backward: bool, t: dict[str, float]) -> str:
    """One printed line: the times and the two ratios."""
    values = (t["loop"], t["batched"], t["absorbed"], t["picked"], t["loop"] / t["picked"],
              t["xattn"], t["single"], t["single"] / t["xattn"])
    cells = " ".join(f"{v:10.2f}" if i in (4, 7) else f"{v:10.4f}" for i, v in enumerate(values))
    return f"{name:12} {'fwd+bwd' if backward else 'fwd':7} {cells}"


if __name__ == "__main__":
    main()
