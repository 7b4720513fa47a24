"""MoEENet: every network of MoEE in one module, built from one config.

reference image ──VAE, CLIP──▶ ReferenceNet ──▶ ReferenceFeatures (once per clip)
waveform ──wav2vec2 (all layers, ±2 frames)──▶ AudioProjection ──▶ audio tokens (b f t c)
EmotionInputs ──EmotionToLatents──▶ emotion latents (b m c)
noisy latents (b f c h w), timesteps (b,), Conditions ──Denoiser──▶ prediction (b f c h w)

The encoders are called through :class:`~moee.models.conditioner.Conditioner`, which owns the
conditions (inputs, drop rates, which encoders train) for training and inference alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from moee.emotions import NUM_EXPERTS
from moee.models import pretrained
from moee.models.audio import AudioEncoder, AudioProjection
from moee.models.conditioner import Conditions
from moee.models.emotion_latents import (
    EmotionInputs,
    EmotionToLatents,
    SpeechEmotionEncoder,
    TextEmotionEncoder,
)
from moee.models.image_encoder import ImageEncoder
from moee.models.reference import ReferenceFeatures, ReferenceNet
from moee.models.unet import Denoiser

log = logging.getLogger(__name__)

PARAMETER_GROUPS = (
    "backbone",
    "reference",
    "audio",
    "temporal",
    *(f"expert_{i}" for i in range(NUM_EXPERTS)),
    "gates",
    "emotion_latents",
    "emotion_modalities",
    "frozen",
)
"""Training-stage parameter groups; ``frozen`` holds pretrained encoders and dead parameters.
``emotion_latents`` is Emotion-to-Latents' label path (its label MLP, token queries, embeddings
and attention: what the experts learn on), ``emotion_modalities`` its AU, text and speech
query MLPs, and the text and speech encoders themselves where they are random stand-ins (the
tiny preset): a frozen random encoder would hand the gating stage features that barely tell
one emotion from another, whereas pretrained T5 and speech-emotion encoders stay frozen."""

SPEECH_ENCODER = "emotion_to_latents.speech_encoder"
"""The speech-emotion encoder's module name (the prefix of its weights)."""

EMOTION_ENCODERS = {"emotion_to_latents.text_encoder": "text_encoder",
                    SPEECH_ENCODER: "speech_encoder"}
"""Emotion-to-Latents' encoders and their ``WeightSources`` field."""

_FROZEN_MODULES = (
    "vae",
    "image_encoder",
    "audio_encoder",
    "emotion_to_latents.text_encoder",
    "emotion_to_latents.speech_encoder",
)


@dataclass
class MoEENetConfig:
    """Everything that decides MoEENet's architecture and weights (YAML-fillable).

    Attributes:
        preset: ``"tiny"`` (CPU, random weights) or ``"sd15"`` (SD-1.5 layout).
        weights: real checkpoints per part; all ``None`` builds random weights (see
            ``pretrained.SD15_WEIGHTS`` for the real ones).
        fused_moe: run each Emotion MoE's experts as one batched computation.
        gradient_checkpointing: recompute U-Net blocks in backward to save memory.
        channels_last: keep the convolutions' weights channels-last (NHWC), the layout cuDNN's
            tensor-core kernels prefer; the numbers and the exports are the same
            (``benchmarks/bench_stage_step.py`` times a stage both ways: on 2 CPU cores, the
            tiny image stage's step is within noise of the default layout).
        max_frames: longest clip (frames) the temporal attention's positions cover.
        num_experts: experts per Emotion MoE: ``NUM_EXPERTS`` (the paper), or 1 for the
            "w/o MoE" ablation (one cross-attention on the emotion latents, no gates).
        global_gate: learn the global gate; ``False`` is the "w/o global gate" ablation
            (local gates only, equal expert weights). See :class:`EmotionMoE`.
        speech_posterior: speech also asks as the label its emotion classifier hears
            (``EmotionToLatents(speech_posterior=...)``); ``False`` is the paper's speech path.
    """

    preset: pretrained.Preset = "tiny"
    weights: pretrained.WeightSources = field(default_factory=pretrained.WeightSources)
    fused_moe: bool = True
    gradient_checkpointing: bool = False
    channels_last: bool = False
    max_frames: int = 32
    num_experts: int = NUM_EXPERTS
    global_gate: bool = True
    speech_posterior: bool = True

    def __post_init__(self) -> None:
        if self.num_experts not in (1, NUM_EXPERTS):
            raise ValueError(f"num_experts must be {NUM_EXPERTS} (one per basic emotion) or 1 "
                             f"(no MoE), got {self.num_experts}")

    @classmethod
    def sd15(cls, **kwargs) -> MoEENetConfig:
        """The real configuration: SD-1.5 layout with every pretrained checkpoint."""
        return cls(preset="sd15", weights=pretrained.SD15_WEIGHTS, **kwargs)


class MoEENet(nn.Module):
    """The whole MoEE network.

    Submodules: ``vae`` (the first stage: ``VideoVAE`` or ``PatchCodec``), ``image_encoder``,
    ``reference_net``, ``denoiser``, ``audio_encoder`` + ``audio_projection``,
    ``emotion_to_latents``.
    Pretrained encoders (VAE, CLIP, wav2vec2, T5, speech emotion) are frozen and stay in eval
    mode; ``self.load_report`` counts loaded vs newly initialised parameters.
    """

    def __init__(self, config: MoEENetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MoEENetConfig()
        arch, src = pretrained.PRESETS[config.preset], config.weights
        unet_dim = arch.unet["cross_attention_dim"]
        self.vae = pretrained.build_first_stage(arch, src.vae)
        self.image_encoder = ImageEncoder(pretrained.build_image_encoder(arch, src.image_encoder))
        self.reference_net = ReferenceNet(pretrained.build_unet(arch, src.unet))
        self.denoiser = Denoiser(
            pretrained.build_unet(arch, src.unet),
            audio_dim=unet_dim,
            emotion_dim=unet_dim,
            moe_heads=arch.moe_heads,
            fused_moe=config.fused_moe,
            temporal_groups=arch.temporal_groups,
            max_frames=config.max_frames,
            concat_reference=arch.concat_reference,
            reference_skip=arch.reference_skip,
        )
        self.audio_encoder = AudioEncoder(pretrained.build_audio_encoder(arch, src.audio_encoder),
                                          loudness=arch.audio_loudness)
        self.audio_projection = AudioProjection(
            self.audio_encoder.window,
            self.audio_encoder.token_features,
            arch.audio_hidden,
            unet_dim,
            arch.audio_tokens,
        )
        self.emotion_to_latents = EmotionToLatents(
            TextEmotionEncoder(*pretrained.build_text_encoder(arch, src.text_encoder),
                               max_length=arch.text_max_length),
            SpeechEmotionEncoder(pretrained.build_speech_encoder(arch, src.speech_encoder)),
            dim=unet_dim,
            num_tokens=arch.emotion_tokens,
            num_embeddings=arch.emotion_embeddings,
            heads=arch.emotion_heads,
            hidden_dim=arch.emotion_hidden,
            speech_posterior=config.speech_posterior,
        )
        if config.num_experts != NUM_EXPERTS or not config.global_gate:
            for extras in self.denoiser.blocks.values():
                extras.emotion = extras.emotion.ablated(config.num_experts, config.global_gate)
        if src.motion_adapter:
            adapter = pretrained.build_motion_adapter(arch, src.motion_adapter)
            log.info("motion adapter: %s", self.denoiser.load_motion_adapter(adapter.state_dict()))
        for p in parameter_groups(self)["frozen"]:
            p.requires_grad_(False)
        self.set_gradient_checkpointing(config.gradient_checkpointing)
        if config.channels_last:
            self.to(memory_format=torch.channels_last)
        self.train()  # puts the frozen encoders in eval mode
        self.load_report = self._load_report()
        log.info("MoEENet(%s): %s", config.preset, self.load_report)

    def _load_report(self) -> dict[str, int]:
        src = self.config.weights
        loaded = {
            "vae": src.vae,
            "image_encoder": src.image_encoder,
            "reference_net": src.unet,
            "denoiser.unet": src.unet,
            "audio_encoder": src.audio_encoder,
            "emotion_to_latents.text_encoder": src.text_encoder,
            "emotion_to_latents.speech_encoder": src.speech_encoder,
        }
        count = {"loaded": 0, "new": 0}
        for name, p in self.named_parameters():
            from_weights = any(s and name.startswith(f"{m}.") for m, s in loaded.items())
            from_weights |= bool(src.motion_adapter) and ".temporal." in name
            count["loaded" if from_weights else "new"] += p.numel()
        return count

    def train(self, mode: bool = True) -> MoEENet:
        """Set training mode; frozen pretrained encoders always stay in eval mode."""
        super().train(mode)
        for name in _FROZEN_MODULES:
            self.get_submodule(name).eval()
        return self

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the U-Nets' blocks (with MoEE's per-block layers) during backward."""
        for unet in (self.denoiser.unet, self.reference_net.unet):
            if enabled:
                unet.enable_gradient_checkpointing()
            else:
                unet.disable_gradient_checkpointing()

    def encode_reference(
        self,
        reference_image: torch.Tensor,
        motion_latents: torch.Tensor | None = None,
        reference_latent: torch.Tensor | None = None,
    ) -> ReferenceFeatures:
        """Reference features, computed ONCE per clip and reused at every denoising step.

        Args:
            reference_image: (b 3 H W) in [-1, 1].
            motion_latents: (b r c h w) latents of the previous clip's last frames, or ``None``.
            reference_latent: (b c h w) scaled VAE latent of the image (encoded when ``None``).
        """
        if reference_latent is None:
            reference_latent = self.vae.encode(reference_image[:, None], sample=False)[:, 0]
        return self.reference_net(
            reference_latent, self.image_encoder(reference_image), motion_latents
        )

    def encode_audio(self, waveform: torch.Tensor) -> torch.Tensor:
        """16 kHz waveform (b, (f + 4) * 640) -> audio tokens (b f t c)."""
        return self.audio_projection(self.audio_encoder(waveform))

    def encode_emotion(self, emotion: EmotionInputs) -> torch.Tensor:
        """Emotion conditions -> emotion latents (b m c)."""
        return self.emotion_to_latents(emotion)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Clean latents of frames (b f 3 H W) in [-1, 1] -> (b f c h w), by the frozen first
        stage: the diffusion targets, and the motion frames' latents (``sample=False``: the
        posterior mode of a VAE)."""
        return self.vae.encode(frames, sample=sample)

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditions: Conditions,
        image_mode: bool = False,
    ) -> torch.Tensor:
        """The objective's prediction (noise, v or clean latent) for ``noisy_latents``.

        Args:
            noisy_latents: (b f c h w); ``f = 1`` with ``image_mode=True`` trains on stills.
            timesteps: (b,).
            conditions: the encoded conditions, with their routing and guidance drops (made
                by :class:`~moee.models.conditioner.Conditioner`, in training and inference).
            image_mode: stills: skip the temporal layers (audio attention runs when audio is
                given: the frame's own tokens).

        Returns:
            (b f c h w)
        """
        image_embeds, ctx = conditions.denoiser_inputs(noisy_latents.shape[1], image_mode)
        return self.denoiser(noisy_latents, timesteps, image_embeds, ctx)


def parameter_group(name: str, frozen: frozenset[str] = frozenset(),
                    stand_ins: tuple[str, ...] = ()) -> str:
    """The training-stage group of the MoEENet parameter ``name`` (see ``PARAMETER_GROUPS``);
    ``stand_ins`` are the emotion encoders built with random weights (trainable)."""
    if name.startswith(tuple(f"{m}." for m in stand_ins)):
        return "emotion_modalities"
    if name in frozen or name.startswith(tuple(f"{m}." for m in _FROZEN_MODULES)):
        return "frozen"
    if name.startswith("reference_net."):
        return "reference"
    if name.startswith("denoiser.unet."):
        return "backbone"
    if name.startswith("emotion_to_latents."):
        modality = name.removeprefix("emotion_to_latents.to_queries.").split(".")[0]
        other = name.startswith("emotion_to_latents.to_queries.") and modality != "label"
        return "emotion_modalities" if other else "emotion_latents"
    if name.startswith("audio_projection.") or ".audio." in name:
        return "audio"
    if ".temporal." in name:
        return "temporal"
    if ".emotion.experts." in name:
        return f"expert_{name.split('.emotion.experts.')[1].split('.')[0]}"
    if ".emotion." in name and "_gate." in name:
        return "gates"
    raise KeyError(f"parameter {name!r} has no group")


def parameter_groups(net: MoEENet) -> dict[str, list[nn.Parameter]]:
    """{group: [parameters]} over every parameter of ``net``, each in exactly one group.

    A training stage freezes everything, then sets ``requires_grad`` on the groups it trains;
    ``frozen`` (pretrained encoders, ReferenceNet parameters that cannot affect its features)
    is never trained.
    """
    dead = frozenset(f"reference_net.{n}" for n in net.reference_net.unused_parameter_names())
    stand_ins = tuple(module for module, part in EMOTION_ENCODERS.items()
                      if getattr(net.config.weights, part) is None)
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in PARAMETER_GROUPS}
    for name, p in net.named_parameters():
        groups[parameter_group(name, dead, stand_ins)].append(p)
    return groups
