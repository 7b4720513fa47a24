"""Emotion MoE speed: fused six-expert path vs per-expert loop, single expert vs cross-attention.

Prints a table (median of several runs, seconds) at tiny and SD-1.5 widths and token counts,
forward and forward+backward, with the ratios the design aims for:
fused >= 2x faster than the loop; single-expert <= 1.15x one plain cross-attention.

    python benchmarks/bench_emotion_moe.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moee.models.emotion_moe import CrossAttentionExpert, EmotionMoE

SHAPES = {  # name: (batch, tokens n, width d, emotion width c, heads)
    "tiny 8x8, b*f=16": (16, 64, 64, 32, 4),
    "sd15 64x64": (2, 4096, 320, 768, 8),
    "sd15 8x8": (2, 64, 1280, 768, 8),
}
EMOTION_TOKENS = 32


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step(module, x, context, backward: bool, **kwargs):
    """One call of ``module``; with ``backward`` also the backward of a scalar loss."""

    def run():
        if backward:
            module.zero_grad(set_to_none=True)
            module(x, context, **kwargs).sum().backward()
        else:
            with torch.no_grad():
                module(x, context, **kwargs)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    columns = ("loop", "fused", "x", "xattn", "single", "x")
    header = f"{'shape':18} {'pass':8} " + " ".join(f"{c:>8}" for c in columns)
    print(f"threads={args.threads}, m={EMOTION_TOKENS} emotion tokens, median of {args.repeats}")
    print(header)
    print("-" * len(header))
    for name, (b, n, d, c, heads) in SHAPES.items():
        moe = EmotionMoE(d, c, heads=heads, zero_init_output=False)
        plain = CrossAttentionExpert(d, c, heads, d // heads)
        x, context = torch.randn(b, n, d), torch.randn(b, EMOTION_TOKENS, c)
        for backward in (False, True):
            timings = {}
            for fused in (False, True):
                moe.fused = fused
                timings[fused] = median_time(step(moe, x, context, backward), args.repeats)
            single = median_time(step(moe, x, context, backward, expert=3), args.repeats)
            xattn = median_time(step(plain, x, context, backward), args.repeats)
            values = (
                timings[False],
                timings[True],
                timings[False] / timings[True],
                xattn,
                single,
                single / xattn,
            )
            row = " ".join(f"{v:8.4f}" if i % 3 != 2 else f"{v:8.2f}" for i, v in enumerate(values))
            print(f"{name:18} {'fwd+bwd' if backward else 'fwd':8} {row}")


if __name__ == "__main__":
    main()
