"""Torch on more than one thread of a process: why the demo runs its network on one thread.

Times the tiny network's training step (forward, loss, backward, Adam) on the main thread,
side by side in one run:

* ``alone``: no other thread has run torch;
* ``beside a live thread``: another thread ran one step and is still alive (as the web
  server's worker threads were after each generation);
* ``after it exits``: the same, once that thread has ended.

With libgomp (torch's OpenMP on Linux), each thread that runs a parallel operation keeps its
own team of workers; with more of them than cores, every parallel region sleeps and wakes its
workers instead of spinning. Prints the median seconds per step, each row's ratio to the
first, and the voluntary context switches per step.

    python benchmarks/bench_threads.py [--steps 5]
"""

from __future__ import annotations

import os
import resource
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from jsonargparse import CLI  # noqa: E402
from timing import median_time  # noqa: E402

from moee.models.conditioner import Conditioner  # noqa: E402
from moee.models.emotion_latents import EmotionInputs  # noqa: E402
from moee.models.moee_net import PARAMETER_GROUPS, MoEENet  # noqa: E402
from moee.models.pretrained import PRESETS  # noqa: E402


def training_step():
    """One optimisation step of the tiny network on one random 2-frame clip, as a function."""
    torch.manual_seed(0)
    net = MoEENet().train()
    conditioner = Conditioner(net, trained_groups=PARAMETER_GROUPS)
    tiny = PRESETS["tiny"]
    side = 64 // tiny.patch_size
    latents = torch.randn(1, 2, tiny.unet["in_channels"], side, side)
    image, audio = torch.rand(1, 3, 64, 64) * 2 - 1, torch.randn(1, 6 * 640)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        conditions = conditioner.encode(image, audio=audio,
                                        emotion=EmotionInputs(label=torch.eye(6)[[3]]))
        loss = net(latents, torch.tensor([500]), conditions).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def measure(step, steps: int) -> tuple[float, float]:
    """(median seconds per step, voluntary context switches per step)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    seconds = median_time(step, steps)
    return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before) / (steps + 1)


def main(steps: int = 5) -> None:
    """Print the step's time alone, beside a live thread that ran torch, and after it exits.

    Args:
        steps: timed steps per row (after one warm-up step).
    """
    step = training_step()
    rows = {"alone": measure(step, steps)}
    done, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        training_step()()
        done.set()
        release.wait()

    thread = threading.Thread(target=other_thread, name="other")
    thread.start()
    done.wait()
    rows["beside a live thread that ran torch"] = measure(step, steps)
    release.set()
    thread.join()
    rows["after it exits"] = measure(step, steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    print(f"{'main thread':<38} {'s / step':>9} {'ratio':>6} {'switches / step':>16}")
    first = rows["alone"][0]
    for name, (seconds, switches) in rows.items():
        print(f"{name:<38} {seconds:>9.3f} {seconds / first:>5.2f}x {switches:>16.0f}")


if __name__ == "__main__":
    CLI(main)
