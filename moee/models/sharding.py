"""The FSDP2 sharding plan of :class:`~moee.models.moee_net.MoEENet` (:func:`shard_network`).

FSDP2 gathers a unit's parameters when the unit is *called*, and a root unit must run before
the units inside it; the stages' conditioner (:mod:`moee.models.conditioner`) calls the VAE
and the encoders before ``MoEENet.forward``, so ``MoEENet`` itself is no unit. Instead there
are four roots, each called on its own:

* ``denoiser`` and ``reference_net``, with every down / mid / up block of their U-Nets — and,
  in the denoiser, each :class:`~moee.models.unet.BlockExtras` (audio attention, Emotion MoE,
  temporal attention) — as units inside (parameters are all-gathered only while a block runs);
* ``audio_projection``;
* ``emotion_to_latents`` without resharding after forward, since ``MoEENet.forward`` reads its
  null latent (classifier-free guidance) after calling it.

The frozen pretrained encoders (VAE, CLIP image encoder, wav2vec2, T5, speech-emotion encoder)
are *not* sharded: they hold no gradients or optimizer state, are small next to the U-Nets, and
are called as methods (``vae.encode``) that FSDP2 cannot hook. Frozen U-Net weights of stages 2
and 3 *are* sharded — 1/N of them per rank — but have ``requires_grad=False``, so FSDP2 neither
allocates nor reduce-scatters gradients for them, and the optimizer receives only the trained
parameters (``DiffusionStage.trained_parameters``): optimizer state exists for the trained
groups alone, sharded like their parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard


def shard_network(net: torch.nn.Module, mesh: DeviceMesh, **options: Any) -> None:
    """Apply FSDP2 to ``net`` (a ``MoEENet``) over ``mesh`` as the module docstring plans.

    ``options`` go to every ``fully_shard`` call (``mp_policy``, ``reshard_after_forward``).
    """
    for unet in (net.denoiser.unet, net.reference_net.unet):
        for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks):
            fully_shard(block, mesh=mesh, **options)
    for extras in net.denoiser.blocks.values():
        fully_shard(extras, mesh=mesh, **options)
    for root in (net.denoiser, net.reference_net, net.audio_projection):
        fully_shard(root, mesh=mesh, **options)
    latents = net.emotion_to_latents
    frozen = {p for m in (latents.text_encoder, latents.speech_encoder) for p in m.parameters()}
    fully_shard(latents, mesh=mesh, ignored_params=frozen,
                **{**options, "reshard_after_forward": False})
