"""Where do the global gates send each condition? The check of a gating-stage export.

Held-out SynthEmo clips (basic and compound, at their apex) are denoised once at a random
timestep, conditioned by one modality at a time (label, AUs, text, speech); every Emotion MoE
layer's global gate ``g`` is recorded and averaged over layers. For each modality and kind of
clip it prints how often the largest weight goes to the clip's main emotion (top-1), the
cross-entropy of ``g`` against the clip's emotion shares (a uniform gate scores ln 6 = 1.79)
and the mean ``g``: a gate that routes reads top-1 near 1 and a cross-entropy well below 1.79;
one that ignores the condition shows the same mean ``g`` in every row. ~1 min on 2 cores.
``--by_emotion`` adds, per modality, the mean ``g`` of the basic clips of each emotion (a row
per clip emotion: where each emotion's voices, texts or AUs are sent).

    python benchmarks/bench_routing.py [--weights runs/tiny/weights] [--batches 3] [--by_emotion]
"""

from __future__ import annotations

import argparse
import sys

import torch

from moee.data.datamodule import ClipFilter, MoEEDataModule
from moee.data.sampling import SamplingOptions
from moee.data.shards import ShardError
from moee.emotions import BASIC_EMOTIONS, COMPOUND_EMOTIONS, parse_emotion
from moee.models.emotion_latents import MODALITIES
from moee.models.emotion_moe import EmotionMoE
from moee.models.objective import DiffusionObjective
from moee.models.weights import StageWeightsError
from moee.stages import GatingModule
from moee.stages.gating import only_modality
from moee.stages.losses import MoEELoss


def gated_module(weights: str) -> GatingModule:
    """The tiny network with the backbone, six experts and gating exports under ``weights``."""
    exports = ["backbone", *(f"expert_{e}" for e in BASIC_EMOTIONS), "gating"]
    return GatingModule(objective=DiffusionObjective("sample", zero_terminal_snr=True),
                        loss=MoEELoss(pixel_weight=0.0, perceptual_weights=None),
                        init_weights=[f"{weights}/{name}.safetensors" for name in exports]).eval()


@torch.no_grad()
def routing_table(module: GatingModule, shards: str, batches: int) -> dict:
    """{(modality, kind): [clips, top-1 hits, summed cross-entropy, summed g]}, ``kind`` being
    basic, compound, or the emotion of a basic clip."""
    data = MoEEDataModule(train=shards, batch_size=16, num_workers=0,
                          clips=ClipFilter(emotions=[*BASIC_EMOTIONS, *COMPOUND_EMOTIONS]),
                          sampling=SamplingOptions(num_frames=4, mns_prob=0.8, apex_fraction=0.8,
                                                   modalities=list(MODALITIES),
                                                   modality_dropout=0.0))
    data.setup("fit")
    gates: list[torch.Tensor] = []
    for layer in module.net.modules():
        if isinstance(layer, EmotionMoE):
            layer.register_forward_hook(
                lambda layer, args, _: gates.append(layer.gates(*args[:2])[1]))
    table: dict = {}
    loader = iter(data.train_dataloader())
    for _ in range(batches):
        batch = next(loader)
        conditions = batch["emotion"]
        present = conditions.presence(torch.device("cpu"))
        shares = torch.tensor([parse_emotion(n).weights for n in batch["emotion_name"]])
        shares = shares.float() / shares.sum(1, keepdim=True)
        compound = torch.tensor([n not in BASIC_EMOTIONS for n in batch["emotion_name"]])
        for column, modality in enumerate(MODALITIES):
            alone = only_modality(conditions, modality, present)
            gates.clear()
            module.diffusion_step({**batch, "emotion": alone},
                                  generator=torch.Generator().manual_seed(0), cfg_dropout=False)
            g = torch.stack([x.view(len(shares), -1, x.shape[-1]).mean(1) for x in gates]).mean(0)
            entropy = -(shares * g.clamp_min(1e-6).log()).sum(1)
            hits = g.argmax(1) == shares.argmax(1)
            kinds = [("basic", ~compound), ("compound", compound)]
            kinds += [(e, torch.tensor([n == e for n in batch["emotion_name"]]))
                      for e in BASIC_EMOTIONS]
            for kind, rows in kinds:
                rows = rows & present[:, column]
                if rows.any():
                    row = table.setdefault((modality, kind), [0, 0, 0.0, torch.zeros(6)])
                    row[0] += int(rows.sum())
                    row[1] += int(hits[rows].sum())
                    row[2] += float(entropy[rows].sum())
                    row[3] += g[rows].sum(0)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="runs/tiny/weights")
    parser.add_argument("--shards", default="runs/synthemo/val")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--by_emotion", action="store_true",
                        help="also the mean g per basic clip emotion, for every modality")
    args = parser.parse_args()
    torch.manual_seed(0)
    try:
        table = routing_table(gated_module(args.weights), args.shards, args.batches)
    except (FileNotFoundError, StageWeightsError, ShardError) as error:
        sys.exit(f"error: {error} (train the quickstart's stages first: python -m moee "
                 "quickstart)")
    print("modality  kind      clips  top-1  CE (uniform 1.79)  mean g "
          f"({', '.join(e[:3] for e in BASIC_EMOTIONS)})")
    kinds = ("basic", "compound", *(BASIC_EMOTIONS if args.by_emotion else ()))
    for modality, kind in ((m, k) for m in MODALITIES for k in kinds if (m, k) in table):
        clips, hits, entropy, g = table[modality, kind]
        mean_g = ", ".join(f"{v:.2f}" for v in (g / clips).tolist())
        print(f"{modality:9s} {kind:9s} {clips:5d}  {hits / clips:5.2f}  {entropy / clips:17.2f}"
              f"  {mean_g}")


if __name__ == "__main__":
    main()
