"""The one place that builds every pretrained-shaped part: real weights or a tiny random config.

Each part is either loaded with its library's own ``from_pretrained`` (a hub id or a local
folder; safetensors) or built from the preset's config with random weights. A requested
checkpoint that cannot be found raises :class:`MissingWeightsError` with one line naming the
model, where it was looked for, and what to do.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoTokenizer,
    ByT5Tokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    HubertConfig,
    HubertForSequenceClassification,
    HubertModel,
    PreTrainedModel,
    T5Config,
    T5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)

from moee.emotions import BASIC_EMOTIONS
from moee.errors import MoEEError
from moee.models.vae import PatchCodec, VideoVAE

Preset = Literal["tiny", "sd15"]


class MissingWeightsError(MoEEError, FileNotFoundError):
    """A real checkpoint was asked for and is not where the config points."""


@dataclass
class WeightSources:
    """Where each pretrained part's weights come from: a hub id or a local folder.

    ``None`` builds the part from the preset's config with random weights. Diffusers parts look
    in the ``unet`` / ``vae`` / ``image_encoder`` subfolder when the source has one.
    """

    unet: str | None = None
    vae: str | None = None
    image_encoder: str | None = None
    audio_encoder: str | None = None
    text_encoder: str | None = None
    speech_encoder: str | None = None
    motion_adapter: str | None = None

    def __post_init__(self) -> None:
        # A command-line `null` can reach a nested `str | None` field as the text "None".
        for name, value in vars(self).items():
            if value in ("None", "null", ""):
                setattr(self, name, None)


SD15_WEIGHTS = WeightSources(
    unet="runwayml/stable-diffusion-v1-5",
    vae="runwayml/stable-diffusion-v1-5",
    image_encoder="lambdalabs/sd-image-variations-diffusers",
    audio_encoder="facebook/wav2vec2-base-960h",
    text_encoder="google-t5/t5-base",
    speech_encoder="superb/hubert-base-superb-er",
    motion_adapter="guoyww/animatediff-motion-adapter-v1-5-2",
)
"""The checkpoints of the real (GPU cluster) configuration."""

_NAMES = {
    "unet": "SD-1.5 U-Net",
    "vae": "SD-1.5 VAE",
    "image_encoder": "CLIP image encoder",
    "audio_encoder": "wav2vec2 audio encoder",
    "text_encoder": "T5 text encoder",
    "speech_encoder": "speech emotion encoder",
    "motion_adapter": "AnimateDiff motion adapter",
}
_SUBFOLDERS = {"unet": "unet", "vae": "vae", "image_encoder": "image_encoder"}


@dataclass
class Architecture:
    """Widths of one preset: config kwargs of every pretrained-shaped part, and MoEE's own."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    image_encoder: dict[str, Any]
    audio_encoder: dict[str, Any]
    text_encoder: dict[str, Any]
    speech_encoder: dict[str, Any]
    audio_tokens: int
    audio_hidden: int
    emotion_tokens: int
    emotion_embeddings: int
    emotion_heads: int
    emotion_hidden: int
    moe_heads: int
    temporal_groups: int
    motion_adapter: dict[str, Any] = field(default_factory=dict)
    text_max_length: int = 64
    """Tokens of a description the text encoder reads: 64 T5 sub-words hold a SynthEmo
    sentence; the tiny preset's byte-level tokenizer needs 256 bytes for the same."""
    patch_size: int | None = None
    """``None``: the first stage is the ``AutoencoderKL`` of :attr:`vae`; an int ``p``: the
    lossless :class:`~moee.models.vae.PatchCodec` (``vae`` then only gives ``sample_size``)."""
    patch_scale: float = 2.0
    """The patch codec's latent scale: pixels in [-1, 1] of faces have a standard deviation
    near 0.5, and diffusion wants unit-variance latents (SD-1.5's VAE has 0.18215 for this)."""
    concat_reference: bool = False
    """Also feed the denoiser the reference latent beside each noisy frame (see
    :class:`~moee.models.unet.Denoiser`)."""
    audio_loudness: bool = False
    """Give the audio projection each wav2vec2 token's loudness too (see
    :class:`~moee.models.audio.AudioEncoder`): the tiny preset's random audio encoder does not
    carry it."""
    reference_skip: bool = False
    """Add the reference latent to the denoiser's output: with the x0 objective it predicts
    the frame's change from the portrait (see :class:`~moee.models.unet.Denoiser`)."""

    @property
    def image_size(self) -> int:
        """Side in pixels of the frames the network is built for."""
        return self.vae["sample_size"]


_SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
_TINY_PATCH = 2
_TINY_UNET = dict(  # on 32x32x12 patch latents of 64 px frames; attention only at 8x8
    sample_size=32,
    in_channels=3 * _TINY_PATCH**2,
    out_channels=3 * _TINY_PATCH**2,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=4,  # diffusers' legacy name: the number of heads
    norm_num_groups=16,
)
_TINY_CONV = dict(conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
_TINY_SPEECH = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **_TINY_CONV
)
# The speech-emotion stand-in (trained by configs/tiny/speech_emotion.yaml) must hear tone (pitch,
# its range, rate), which 16 conv channels barely do: a 6-way head on it reached 32 % on
# held-out voices after 300 steps, 57 % with 64 channels at the same step time (128: 42 %, 1.7x
# slower). The head is part of it, as the real checkpoint's is: Emotion-to-Latents reads its
# posterior as a label.
_TINY_SPEECH_EMOTION = {**_TINY_SPEECH, "conv_dim": (64,) * 7, "classifier_proj_size": 32,
                        "id2label": dict(enumerate(BASIC_EMOTIONS))}

PRESETS: dict[str, Architecture] = {
    "tiny": Architecture(
        unet=_TINY_UNET,
        vae=dict(sample_size=64),
        patch_size=_TINY_PATCH,
        concat_reference=True,
        reference_skip=True,
        audio_loudness=True,
        image_encoder=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=64,
        ),
        audio_encoder=_TINY_SPEECH,
        text_encoder=dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
        text_max_length=256,
        speech_encoder=_TINY_SPEECH_EMOTION,
        audio_tokens=4,
        audio_hidden=64,
        emotion_tokens=8,
        emotion_embeddings=16,
        emotion_heads=4,
        emotion_hidden=64,
        moe_heads=4,
        temporal_groups=16,
        motion_adapter=dict(block_out_channels=(32, 64, 128), motion_norm_num_groups=16),
    ),
    "sd15": Architecture(
        unet=_SD15_UNET,
        vae=dict(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        ),
        image_encoder=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=768,
        ),
        audio_encoder={},  # Wav2Vec2Config() defaults are wav2vec2-base
        text_encoder=dict(
            vocab_size=384, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12
        ),  # t5-base widths; byte vocabulary when random
        # HubertConfig() defaults are hubert-base; SUPERB's emotion-recognition head on it
        speech_encoder=dict(id2label=dict(enumerate(("neu", "hap", "ang", "sad"))),
                            use_weighted_layer_sum=True),
        audio_tokens=32,
        audio_hidden=512,
        emotion_tokens=32,
        emotion_embeddings=64,
        emotion_heads=8,
        emotion_hidden=256,
        moe_heads=8,
        temporal_groups=32,
    ),
}


def _load(part: str, source: str, loader, **kwargs):
    """``loader(source, ...)`` with a one-line :class:`MissingWeightsError` when it fails."""
    subfolder = _SUBFOLDERS.get(part)
    if subfolder and os.path.isdir(source) and not os.path.isdir(os.path.join(source, subfolder)):
        subfolder = None  # a local folder holding just this part
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as err:
        offline = " (offline)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise MissingWeightsError(
            f"{_NAMES[part]} weights not found at {source!r}{offline}: "
            f"{type(err).__name__}. Download them with `hf download {source}` or set "
            f"model.init_args.net.weights.{part} to a local folder."
        ) from None


def _random(part: str, build: Callable[[], Any]) -> Any:
    """Build a part with random weights drawn from a seed fixed per part.

    Frozen random parts (the tiny preset's image and audio encoders) are never saved with the
    trained weights, so every stage and every inference run must draw exactly the same ones,
    whatever the global RNG has done before. (The random text and speech emotion encoders are
    trained by the gating stage and saved with it: see ``moee_net.parameter_group``.)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(part.encode()))
        return build()


def _speech_config(cls, kwargs: dict[str, Any]):
    return cls(**kwargs, apply_spec_augment=False, layerdrop=0.0)


def build_unet(arch: Architecture, source: str | None) -> UNet2DConditionModel:
    """The spatial U-Net (used twice: denoiser and ReferenceNet)."""
    if source:
        return _load("unet", source, UNet2DConditionModel.from_pretrained)
    return _random("unet", lambda: UNet2DConditionModel(**arch.unet))


def build_vae(arch: Architecture, source: str | None) -> AutoencoderKL:
    """The latent autoencoder."""
    if source:
        return _load("vae", source, AutoencoderKL.from_pretrained)
    return _random("vae", lambda: AutoencoderKL(**arch.vae))


def build_first_stage(arch: Architecture, source: str | None) -> VideoVAE | PatchCodec:
    """Frames <-> latents: the preset's lossless patch codec, or its (loaded) autoencoder."""
    if arch.patch_size is None:
        return VideoVAE(build_vae(arch, source))
    if source:
        raise ValueError(
            f"this preset's first stage is a lossless {arch.patch_size}x{arch.patch_size} patch "
            f"codec with no weights, but weights.vae is {source!r}: set "
            "model.init_args.net.weights.vae to null")
    return PatchCodec(arch.patch_size, arch.image_size, arch.patch_scale)


def build_image_encoder(arch: Architecture, source: str | None) -> CLIPVisionModelWithProjection:
    """The CLIP vision tower whose projected embedding the U-Nets cross-attend to."""
    if source:
        return _load("image_encoder", source, CLIPVisionModelWithProjection.from_pretrained)
    return _random("image_encoder", lambda: CLIPVisionModelWithProjection(
        CLIPVisionConfig(**arch.image_encoder)))


def _build_speech_model(part: str, model_cls, config_cls, kwargs: dict[str, Any],
                        source: str | None):
    """A frozen wav2vec2-family feature extractor: no SpecAugment masking, no layer drop."""
    if source:
        return _load(part, source, model_cls.from_pretrained, apply_spec_augment=False,
                     layerdrop=0.0)
    return _random(part, lambda: model_cls(_speech_config(config_cls, kwargs)))


def build_audio_encoder(arch: Architecture, source: str | None) -> Wav2Vec2Model:
    """wav2vec2 for lip-sync features (50 Hz, every hidden state used)."""
    return _build_speech_model("audio_encoder", Wav2Vec2Model, Wav2Vec2Config,
                               arch.audio_encoder, source)


def build_speech_encoder(arch: Architecture, source: str | None) -> PreTrainedModel:
    """The speech-emotion encoder: a wav2vec2-family model, with its emotion classifier where
    the checkpoint has one (an ``...ForSequenceClassification``, e.g. SUPERB's emotion
    recognition HuBERT) or, random, where the preset's config names classes (``id2label``)."""
    if source:
        config = _load("speech_encoder", source, AutoConfig.from_pretrained)
        classifier = any(name.endswith("ForSequenceClassification")
                         for name in config.architectures or ())
        model_cls = AutoModelForAudioClassification if classifier else AutoModel
        return _build_speech_model("speech_encoder", model_cls, HubertConfig,
                                   arch.speech_encoder, source)
    if "id2label" not in arch.speech_encoder:
        return _build_speech_model("speech_encoder", HubertModel, HubertConfig,
                                   arch.speech_encoder, None)
    return _random("speech_encoder", lambda: _fresh_head(HubertForSequenceClassification(
        _speech_config(HubertConfig, arch.speech_encoder))))


def _fresh_head(model: HubertForSequenceClassification) -> HubertForSequenceClassification:
    """Give a random classifier's two head layers torch's default init: transformers' N(0, 0.02)
    makes their product so small that the encoder under them barely learns (sad vs happy
    voices: 55 % of unseen voices after 120 steps, 91 % with this)."""
    model.projector.reset_parameters()
    model.classifier.reset_parameters()
    return model


def build_text_encoder(arch: Architecture, source: str | None):
    """T5 encoder and its tokenizer (a byte-level tokenizer when the encoder is random)."""
    if source:
        model = _load("text_encoder", source, T5EncoderModel.from_pretrained)
        return model, _load("text_encoder", source, AutoTokenizer.from_pretrained)
    return _random("text_encoder", lambda: T5EncoderModel(T5Config(**arch.text_encoder))), \
        ByT5Tokenizer()


def build_motion_adapter(arch: Architecture, source: str | None) -> MotionAdapter:
    """AnimateDiff motion adapter whose modules initialise the temporal attention."""
    if source:
        return _load("motion_adapter", source, MotionAdapter.from_pretrained)
    return _random("motion_adapter", lambda: MotionAdapter(**arch.motion_adapter))
