"""The network on a CUDA GPU: the same numbers as on the CPU, bf16 close to float32, and a
``bf16-mixed`` fit that trains only what its stage trains. Skipped without CUDA (the
``gpu`` marker); ``pytest -m gpu`` on a GPU machine runs them."""

import copy

import lightning as L
import numpy as np
import pytest
import torch

from moee.inference.conditions import EmotionTrack
from moee.inference.pipeline import MoEEPipeline
from moee.inference.sampling import SamplerSettings
from moee.stages import ExpertModule
from moee.stages.losses import MoEELoss
from tests.clips import make_batch, make_test_clip

pytestmark = pytest.mark.gpu


def sample(net, steps: int = 4) -> np.ndarray:
    """A 16-frame video of a fixed portrait, speech and seed, as uint8 frames."""
    pipeline = MoEEPipeline(net, SamplerSettings(steps=steps, clip_frames=8), progress=False)
    g = torch.Generator().manual_seed(3)
    portrait = torch.rand(3, 64, 64, generator=g) * 2 - 1
    audio = torch.randn(16 * 640, generator=g).numpy() * 0.1
    return pipeline.generate(portrait, audio, EmotionTrack.parse("happily surprised"),
                             torch.Generator().manual_seed(0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 videos, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def test_cuda_video_matches_cpu_and_bf16_stays_close(tiny_net):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    on_cpu = sample(tiny_net)
    net = copy.deepcopy(tiny_net).cuda()
    on_gpu = sample(net)
    assert on_gpu.shape == on_cpu.shape == (16, 64, 64, 3)
    assert np.abs(on_gpu.astype(int) - on_cpu.astype(int)).max() <= 2  # rounding, not maths
    in_bf16 = sample(net.to(torch.bfloat16))
    assert psnr(in_bf16, on_gpu) > 30, psnr(in_bf16, on_gpu)
    assert psnr(in_bf16, on_gpu) < psnr(on_cpu, on_gpu)  # bf16 did run (it rounds more)


def test_bf16_mixed_fit_trains_the_expert_only():
    clips = [make_test_clip(identity=f"id{i}", emotion="sad", num_frames=12, size=64, seed=i)
             for i in range(2)]
    data = torch.utils.data.DataLoader([make_batch(clips, num_frames=4)] * 3, batch_size=None)
    stage = ExpertModule(emotion="sad", loss=MoEELoss(pixel_weight=0.5,
                                                      perceptual_weights="random"))
    before = {name: p.detach().clone() for name, p in stage.net.named_parameters()}
    trained = set(stage.trained_parameters())
    L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=3, logger=False,
              enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False).fit(stage, train_dataloaders=data)
    after = dict(stage.net.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name].cpu())}
    assert changed and changed <= trained, sorted(changed - trained)[:5]
    assert all(p.dtype == torch.float32 for p in stage.parameters())  # fp32 master weights
    assert all(torch.isfinite(p).all() for p in stage.parameters())
