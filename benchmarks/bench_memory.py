"""Peak memory: how inference and training memory grow with frames and resolution, and what
VAE slicing, VAE tiling and activation checkpointing save.

Every configuration runs in a fresh process, which prints its resident memory after building
the network and its peak while working (the kernel's peak counter is reset after the build,
so the figures are not masked by the build's own transient peak; Linux only):

* inference: one clip of ``frames`` frames, one denoising step with the three guidance branches
  batched, then the VAE decode (all frames at once, one at a time, or tiled);
* training: one backbone training step (video mode, batch 1, forward + backward, pixel loss on)
  with and without gradient checkpointing of the U-Nets.

Attention is always ``F.scaled_dot_product_attention`` (on a CPU its flash kernel keeps memory
linear in tokens; no sliced-attention variant is needed).

    python benchmarks/bench_memory.py                  # tiny preset grid (~3 min on 2 cores)
    python benchmarks/bench_memory.py --sd15           # + SD-1.5 shape, 512², 1/2/4 frames (slow)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

def status_gib(field: str) -> float:
    """A memory field of /proc/self/status (``VmRSS``: now, ``VmHWM``: peak) in GiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 2**20


def reset_peak() -> float:
    """Reset the peak to the current resident memory (Linux ``clear_refs`` 5); returns it."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return status_gib("VmRSS")


def run_one(case: dict) -> dict:
    """Build and run one configuration in this process; returns its memory figures."""
    import numpy as np
    import torch
    from clips import make_batch, make_test_clip

    from moee.inference.conditions import EmotionTrack
    from moee.inference.pipeline import MoEEPipeline
    from moee.inference.sampling import SamplerSettings
    from moee.models.moee_net import MoEENet, MoEENetConfig
    from moee.stages import BackboneModule
    from moee.stages.losses import MoEELoss

    torch.manual_seed(0)
    size, frames = case["size"], case["frames"]
    net = MoEENetConfig(preset=case["preset"], gradient_checkpointing=case.get("checkpointing",
                                                                                 False))
    if case["mode"] == "inference":
        model = MoEENet(net).eval()
        model.vae.slice_size = 1 if case.get("vae") == "sliced" else frames
        if case.get("vae") == "tiled":
            model.vae.vae.enable_tiling()
        pipeline = MoEEPipeline(model, SamplerSettings(steps=1, clip_frames=frames), size=size,
                                progress=False)
        built = reset_peak()
        audio = np.random.default_rng(0).normal(0, 0.1, frames * 640).astype(np.float32)
        pipeline.generate(torch.rand(3, size, size) * 2 - 1, audio,
                          EmotionTrack.parse("happily surprised"))
    else:
        stage = BackboneModule(net=net, loss=MoEELoss(pixel_weight=0.1,
                                                      perceptual_weights="random"))
        clip = make_test_clip(identity="a", emotion="sad", num_frames=frames + 4, size=size)
        batch = make_batch([clip], num_frames=frames)
        built = reset_peak()
        stage.diffusion_step(batch)["total"].backward()
    return {"built": built, "peak": status_gib("VmHWM")}


def cases(sd15: bool) -> list[dict]:
    """The grid: frames and resolution growth, then each memory-saving switch."""
    grid = [dict(mode="inference", preset="tiny", size=64, frames=f) for f in (8, 16, 32)]
    grid += [dict(mode="inference", preset="tiny", size=s, frames=16) for s in (128, 256)]
    for size, frames in ((64, 8), (64, 16), (64, 32), (128, 16)):
        grid += [dict(mode="training", preset="tiny", size=size, frames=frames, checkpointing=c)
                 for c in (False, True)]
    if sd15:
        grid += [dict(mode="inference", preset="sd15", size=512, frames=f, vae="sliced")
                 for f in (2, 4)]
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="add SD-1.5-shape 512² inference")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # JSON case, run in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    print(f"{'mode':10} {'preset':6} {'size':>5} {'frames':>6} {'switch':14} "
          f"{'after build':>11} {'peak':>8} {'peak - build':>12}")
    for case in cases(args.sd15):
        result = subprocess.run([sys.executable, __file__, "--one", json.dumps(case)],
                                capture_output=True, text=True, check=True)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        switch = case.get("vae") or ("checkpointing" if case.get("checkpointing") else "-")
        print(f"{case['mode']:10} {case['preset']:6} {case['size']:5} {case['frames']:6} "
              f"{switch:14} {figures['built']:9.2f} G {figures['peak']:6.2f} G "
              f"{figures['peak'] - figures['built']:10.2f} G", flush=True)


if __name__ == "__main__":
    main()
