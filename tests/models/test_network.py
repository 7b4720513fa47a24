"""The tiny MoEENet end to end: shapes, every condition acts, guidance drops, groups, training."""

from __future__ import annotations

import copy

import pytest
import torch

from moee.models.conditioner import CONDITIONS, Conditioner
from moee.models.emotion_latents import EmotionInputs
from moee.models.moee_net import (
    PARAMETER_GROUPS,
    MoEENet,
    MoEENetConfig,
    parameter_group,
    parameter_groups,
)
from moee.stages import BackboneModule
from moee.stages.losses import MoEELoss
from tests.models.conftest import CHANNELS, DIM, LATENT, B, F, wake_zero_inits


def run(net, c, reference=None, audio_tokens=None, image_mode=False, **inputs):
    """The network on ``c``'s latents, its conditions encoded by the conditioner (with
    gradients through every encoder) from ``c``'s inputs, overridden by ``inputs``
    (``drop_<condition>`` among them); ``reference`` and ``audio_tokens`` replace the encoded
    ones."""
    args = dict(reference_image=c["image"], audio=c["audio"], emotion=c["emotion"]) | inputs
    drop = {name: args.pop(f"drop_{name}") for name in CONDITIONS if f"drop_{name}" in args}
    conditions = Conditioner(net, trained_groups=PARAMETER_GROUPS).encode(**args, drop=drop)
    if reference is not None:
        conditions.reference = reference
    if audio_tokens is not None:
        conditions.audio = audio_tokens
    return net(c["latents"], c["timesteps"], conditions, image_mode=image_mode)


@torch.no_grad()
def test_shapes_through_the_network(tiny_net, clip_inputs):
    ref = tiny_net.encode_reference(clip_inputs["image"], clip_inputs["motion"])
    assert set(ref.features) == set(tiny_net.denoiser.block_names)
    for feats in ref.features.values():
        assert feats.shape[:2] == (B, 3)  # reference + 2 motion frames
    tokens = tiny_net.encode_audio(clip_inputs["audio"])
    assert tokens.shape == (B, F, 4, DIM)
    assert tiny_net.encode_emotion(clip_inputs["emotion"]).shape == (B, 8, DIM)
    out = run(tiny_net, clip_inputs, reference=ref)
    assert out.shape == (B, F, CHANNELS, LATENT, LATENT) and torch.isfinite(out).all()


@torch.no_grad()
def test_a_given_reference_latent_equals_the_encoded_one(tiny_net, clip_inputs):
    """The pipeline hands the conditioner the portrait's latent it already has."""
    latent = tiny_net.encode_frames(clip_inputs["image"][:, None])[:, 0]
    torch.testing.assert_close(run(tiny_net, clip_inputs, reference_latent=latent),
                               run(tiny_net, clip_inputs))


@torch.no_grad()
def test_every_condition_changes_the_output(tiny_net, clip_inputs):
    base = run(tiny_net, clip_inputs)
    other = {k: v.flip(0) if torch.is_tensor(v) else v for k, v in clip_inputs.items()}
    changed = {
        "reference": dict(reference_image=other["image"]),
        "motion": dict(motion_latents=clip_inputs["motion"]),
        "audio": dict(audio=other["audio"]),
        "emotion": dict(emotion=EmotionInputs(label=torch.eye(6)[[0, 5]])),
        "expert": dict(expert=2),
        "weights": dict(weights=torch.eye(6)[[1, 2]]),
    }
    for what, kwargs in changed.items():
        assert not torch.allclose(run(tiny_net, clip_inputs, **kwargs), base, atol=1e-4), what


@torch.no_grad()
def test_guidance_drops(tiny_net, clip_inputs):
    drop = torch.tensor([True, False])
    dropped = run(tiny_net, clip_inputs, drop_emotion=drop)
    base = run(tiny_net, clip_inputs)
    # a dropped emotion leaves the Emotion MoE out: the backbone's own prediction
    torch.testing.assert_close(dropped[0], run(tiny_net, clip_inputs, emotion=None)[0])
    torch.testing.assert_close(dropped[1], base[1])
    for kwargs in (dict(drop_audio=drop), dict(drop_reference=drop)):
        out = run(tiny_net, clip_inputs, **kwargs)
        assert not torch.allclose(out[0], base[0], atol=1e-4)
        torch.testing.assert_close(out[1], base[1])


@torch.no_grad()
def test_image_mode_skips_time_and_hears_its_frame(tiny_net, clip_inputs):
    c = dict(clip_inputs, latents=clip_inputs["latents"][:, :1])
    silent = run(tiny_net, c, image_mode=True, audio=None)
    assert silent.shape == (B, 1, CHANNELS, LATENT, LATENT)
    tokens = tiny_net.encode_audio(c["audio"])[:, :1]  # the still's own frame of audio
    heard = run(tiny_net, c, image_mode=True, audio=None, audio_tokens=tokens)
    assert not torch.allclose(heard, silent, atol=1e-4)
    shaken = copy.deepcopy(tiny_net)
    for name, p in shaken.named_parameters():
        if ".temporal." in name:
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(run(shaken, c, image_mode=True, audio=None, audio_tokens=tokens),
                               heard)


def test_gradient_checkpointing_and_deepcopy(clip_inputs):
    torch.manual_seed(0)
    net = MoEENet()
    wake_zero_inits(net)
    results = []
    for checkpointing in (False, True):
        net.zero_grad(set_to_none=True)
        net.set_gradient_checkpointing(checkpointing)
        out = run(net, clip_inputs)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in net.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        if grad is not None:
            torch.testing.assert_close(results[1][1][name], grad, msg=name)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p in twin.denoiser.blocks.parameters():
            p.mul_(0.5)
        assert not torch.allclose(run(twin, clip_inputs), run(net, clip_inputs))


def test_channels_last_network_computes_the_same_and_exports_plain_tensors(clip_inputs):
    torch.manual_seed(0)
    plain = MoEENet()
    wake_zero_inits(plain)
    fast = MoEENet(MoEENetConfig(channels_last=True))
    fast.load_state_dict(plain.state_dict())
    convs = [p for p in fast.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)
    outputs = []
    for net in (plain, fast):
        out = run(net, clip_inputs)
        out.square().mean().backward()
        outputs.append((out.detach(), net.denoiser.unet.conv_in.weight.grad))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], rtol=1e-4, atol=1e-5)
    module = BackboneModule(net=MoEENetConfig(channels_last=True),
                            loss=MoEELoss(perceptual_weights=None))
    assert all(t.is_contiguous() for t in module.exported_weights().values())  # safetensors


def test_parameter_groups_cover_every_parameter_once(tiny_net, clip_inputs):
    groups = parameter_groups(tiny_net)
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(tiny_net.parameters()))
    assert all(groups[g] for g in groups)
    trainable = {id(p) for p in tiny_net.parameters() if p.requires_grad}
    assert trainable == set(ids) - {id(p) for p in groups["frozen"]}
    # the ReferenceNet parameters put in `frozen` are exactly the ones without gradient
    net = MoEENet()
    net.requires_grad_(True)
    out = run(net, clip_inputs)
    out.mean().backward()
    no_grad = {n for n, p in net.reference_net.named_parameters() if p.grad is None}
    assert no_grad == set(net.reference_net.unused_parameter_names())


def test_only_random_emotion_encoders_are_trainable():
    stand_in = "emotion_to_latents.text_encoder.model.shared.weight"
    assert parameter_group(stand_in) == "frozen"  # a pretrained T5 stays frozen
    assert parameter_group(stand_in, stand_ins=("emotion_to_latents.text_encoder",)) == \
        "emotion_modalities"
    assert parameter_group("audio_encoder.model.masked_spec_embed",
                           stand_ins=("emotion_to_latents.text_encoder",)) == "frozen"
    net = MoEENet()  # tiny: both emotion encoders are random stand-ins
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    for encoder in ("text_encoder", "speech_encoder"):
        assert any(n.startswith(f"emotion_to_latents.{encoder}.") for n in trainable), encoder
    assert not any(n.startswith(("audio_encoder.", "image_encoder.")) for n in trainable)


def test_tiny_network_overfits_one_clip(clip_inputs):
    torch.manual_seed(0)
    net = MoEENet().train()
    c = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in clip_inputs.items()}
    c["latents"], c["audio"] = c["latents"][:, :2], c["audio"][:, :6 * 640]  # 2 frames
    noise = torch.randn_like(c["latents"])
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-3)
    emotion = EmotionInputs(label=torch.eye(6)[[3]])
    losses = []
    for _ in range(120):
        pred = run(net, dict(c, timesteps=c["timesteps"][:1]), emotion=emotion)
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses


@torch.no_grad()
def test_bfloat16_network_matches_float32(tiny_net, clip_inputs):
    """The GPU configurations run the network in bf16: it must take bf16 latents, images and
    waveforms with float32 label and AU vectors, and agree with float32 to bf16 precision."""
    half = copy.deepcopy(tiny_net).to(torch.bfloat16)
    inputs = {**clip_inputs, "latents": clip_inputs["latents"].to(torch.bfloat16),
              "motion": clip_inputs["motion"].to(torch.bfloat16),
              "image": clip_inputs["image"].to(torch.bfloat16),
              "audio": clip_inputs["audio"].to(torch.bfloat16)}
    out = run(half, inputs)
    assert out.dtype == torch.bfloat16
    reference = run(tiny_net, clip_inputs)
    assert (out.float() - reference).abs().mean() < 0.05 * reference.abs().mean()


@torch.no_grad()
def test_reference_latent_is_concatenated_to_every_frame(tiny_net, clip_inputs):
    """The tiny denoiser also takes the reference latent beside each noisy frame: a different
    latent with the same ReferenceNet features changes the output; a dropped reference is a
    zero latent there."""
    assert tiny_net.denoiser.concat_reference
    assert tiny_net.denoiser.unet.conv_in.in_channels == 2 * CHANNELS
    ref = tiny_net.encode_reference(clip_inputs["image"])
    other = copy.copy(ref)
    other.latent = ref.latent.flip(0)
    base = run(tiny_net, clip_inputs, reference=ref)
    assert not torch.allclose(run(tiny_net, clip_inputs, reference=other), base, atol=1e-4)
    drop = torch.tensor([True, False])
    zero = copy.copy(ref)
    zero.latent = ref.latent * torch.tensor([0.0, 1.0])[:, None, None, None]
    torch.testing.assert_close(run(tiny_net, clip_inputs, reference=ref, drop_reference=drop),
                               run(tiny_net, clip_inputs, reference=zero, drop_reference=drop))


@torch.no_grad()
def test_reference_skip_predicts_the_portrait_until_trained(clip_inputs):
    from moee.models import pretrained
    from moee.models.unet import Denoiser

    torch.manual_seed(0)
    net = MoEENet().eval()
    assert net.denoiser.reference_skip  # the tiny preset's x0 prior
    portrait = net.vae.encode(clip_inputs["image"][:, None], sample=False)
    out = run(net, clip_inputs)
    torch.testing.assert_close(out, portrait.expand_as(out))  # every frame, untrained
    dropped = run(net, clip_inputs, drop_reference=torch.tensor([True, False]))
    assert not dropped[0].any()
    torch.testing.assert_close(dropped[1], out[1])
    with pytest.raises(ValueError, match="reference_skip needs concat_reference"):
        Denoiser(pretrained.build_unet(pretrained.PRESETS["tiny"], None), audio_dim=DIM,
                 emotion_dim=DIM, reference_skip=True)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_reference_net_stops_after_its_last_feature(clip_inputs, checkpointing):
    """The ReferenceNet's forward ends at its last recorded block (the 16 and 32 px up blocks
    and conv_out never run) with exactly the features and gradients of a full forward."""
    torch.manual_seed(0)
    net = MoEENet()
    net.set_gradient_checkpointing(checkpointing)
    ref_net = net.reference_net
    ran = []
    ref_net.unet.conv_out.register_forward_hook(lambda *_: ran.append("conv_out"))
    latent = net.vae.encode(clip_inputs["image"][:, None])[:, 0]
    embeds = net.image_encoder(clip_inputs["image"])

    def features_and_grads():
        ref_net.zero_grad()
        features = ref_net(latent, embeds, clip_inputs["motion"]).features
        sum(f.square().mean() for f in features.values()).backward()
        return ({k: v.detach() for k, v in features.items()},
                {n: p.grad.clone() for n, p in ref_net.named_parameters() if p.grad is not None})

    early = features_and_grads()
    assert ran == []
    for processor in ref_net.unet.attn_processors.values():
        processor.last = False  # the full forward, to the output convolution
    full = features_and_grads()
    assert ran == ["conv_out"]
    assert early[0].keys() == full[0].keys() == set(net.denoiser.block_names)
    for name in full[0]:
        torch.testing.assert_close(early[0][name], full[0][name], msg=name)
    assert early[1].keys() == full[1].keys() and early[1]
    for name in full[1]:
        torch.testing.assert_close(early[1][name], full[1][name], msg=name)
