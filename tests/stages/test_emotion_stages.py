"""The emotion stages: six experts side by side in one run, and the gating stage's routing and
alignment terms."""

import logging
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from moee.emotions import BASIC_EMOTIONS
from moee.stages import BackboneModule, ExpertModule, GatingModule
from moee.stages.gating import only_modality
from moee.stages.losses import MoEELoss
from tests.clips import make_batch, make_test_clip


def loss():
    return MoEELoss(pixel_weight=0.5, perceptual_weights=None)


@pytest.fixture(scope="module")
def mixed_batch():
    """One sad and one happy clip."""
    clips = [make_test_clip(identity=f"id{i}", emotion=e, num_frames=12, size=64, seed=i,
                            text=f"a {e} face") for i, e in enumerate(("sad", "happy"))]
    return make_batch(clips, num_frames=4)


def expert_grads(module: ExpertModule, batch) -> dict[int, float]:
    module.net.zero_grad(set_to_none=True)
    module.diffusion_step(batch, cfg_dropout=False)["total"].backward()
    norms: dict[int, float] = {}
    for name, p in module.net.named_parameters():
        if ".emotion.experts." in name and p.grad is not None:
            index = int(name.split(".emotion.experts.")[1].split(".")[0])
            norms[index] = norms.get(index, 0.0) + float(p.grad.square().sum())
    return {i: norm for i, norm in norms.items() if norm > 0}


def test_experts_side_by_side_each_learn_from_their_own_clips_only(tmp_path, mixed_batch):
    sad, happy = BASIC_EMOTIONS.index("sad"), BASIC_EMOTIONS.index("happy")
    module = ExpertModule(emotion=["sad", "happy"], loss=loss(),
                          export_path=str(tmp_path / "expert_{emotion}.safetensors"))
    assert set(module.trainable_groups) == {f"expert_{sad}", f"expert_{happy}"}
    with torch.no_grad():  # zero-initialised outputs pass no gradient to the rest of an expert
        for p in module.net.parameters():
            if p.requires_grad:
                p.normal_(std=0.02)
        module.net.denoiser.unet.conv_out.weight.normal_(std=0.02)  # zero: reference_skip
    assert set(expert_grads(module, mixed_batch)) == {sad, happy}
    only_sad = {k: (v[:1] if torch.is_tensor(v) else v[:1] if isinstance(v, list) else v)
                for k, v in mixed_batch.items() if k != "emotion"}
    only_sad["emotion"] = mixed_batch["emotion"].select(slice(0, 1))
    assert set(expert_grads(module, only_sad)) == {sad}

    module.on_train_end()
    for emotion, index in (("sad", sad), ("happy", happy)):
        path = tmp_path / f"expert_{emotion}.safetensors"
        experts = {k.split(".emotion.experts.")[1].split(".")[0] for k in load_file(path)
                   if ".emotion.experts." in k}
        assert experts == {str(index)}
        with safe_open(str(path), "pt") as file:
            assert file.metadata()["groups"] == f"expert_{index}"
    with pytest.raises(ValueError, match="{emotion}"):
        ExpertModule(emotion="all", export_path=str(tmp_path / "experts.safetensors"))
    with pytest.raises(ValueError, match="per basic emotion"):
        ExpertModule(emotion=["sad", "sadly fearful"])


def test_experts_side_by_side_learn_a_compound_through_its_two_components_experts():
    surprised, sad = BASIC_EMOTIONS.index("surprised"), BASIC_EMOTIONS.index("sad")
    clips = [make_test_clip(identity=f"id{i}", emotion=e, num_frames=12, size=64, seed=i)
             for i, e in enumerate(("sadly surprised", "happy"))]
    batch = make_batch(clips, num_frames=4)
    module = ExpertModule(emotion="all", loss=loss())
    expected = torch.zeros(2, len(BASIC_EMOTIONS))
    expected[0, surprised], expected[0, sad], expected[1, BASIC_EMOTIONS.index("happy")] = \
        0.6, 0.4, 1.0
    torch.testing.assert_close(module.condition_options(batch)["expert"], expected)
    with torch.no_grad():
        for p in module.net.parameters():
            if p.requires_grad:
                p.normal_(std=0.02)
        module.net.denoiser.unet.conv_out.weight.normal_(std=0.02)
    only_compound = {k: (v[:1] if torch.is_tensor(v) or isinstance(v, list) else v)
                     for k, v in batch.items() if k != "emotion"}
    only_compound["emotion"] = batch["emotion"].select(slice(0, 1))
    assert set(expert_grads(module, only_compound)) == {surprised, sad}

    basic_only = make_batch([clips[1], make_test_clip(emotion="sad", num_frames=12)],
                            num_frames=4)
    assert module.condition_options(basic_only)["expert"].tolist() == \
        [BASIC_EMOTIONS.index("happy"), sad]  # basic clips keep the one-expert path
    with pytest.raises(ValueError, match="neutral clip"):
        module.condition_options(make_batch([make_test_clip(emotion="neutral", num_frames=12)],
                                         num_frames=4))
    with pytest.raises(ValueError, match="the sad expert, which this run does not train"):
        ExpertModule(emotion=["surprised", "happy"], loss=loss()).condition_options(batch)


def test_gating_routing_and_alignment_terms_train_gates_and_latents(mixed_batch):
    module = GatingModule(loss=loss(), routing_weight=0.5, alignment_weight=1.0)
    batch = {**mixed_batch, "emotion": replace(mixed_batch["emotion"],
                                               present=torch.ones(2, 4, dtype=torch.bool))}
    plain = GatingModule(loss=loss()).diffusion_step(batch, cfg_dropout=False)
    assert "routing" not in plain and "alignment" not in plain
    terms = module.diffusion_step(batch, cfg_dropout=False)
    assert terms["routing"] > 0 and terms["alignment"] > 0
    module.net.zero_grad(set_to_none=True)
    (terms["routing"] + terms["alignment"]).backward()
    grads = {n for n, p in module.net.named_parameters() if p.grad is not None
             and p.grad.abs().sum() > 0}
    assert any(".context_gate." in n for n in grads)  # routing reaches the emotion term
    assert any(".global_gate." in n for n in grads)
    for modality in ("au", "text", "speech"):  # each modality is pulled towards the label
        assert any(n.startswith(f"emotion_to_latents.to_queries.{modality}.") for n in grads), \
            modality
    assert not any(n.startswith("emotion_to_latents.to_queries.label.") for n in grads)


def test_gating_alignment_routing_term_is_the_emotion_terms_cross_entropy(mixed_batch):
    """The routing part of the alignment term: each MoE layer's global-gate emotion term on a
    modality's latents, against the clip's shares; it moves the latents, never the gates."""
    import torch.nn.functional as F

    from moee.models.emotion_latents import EmotionInputs
    from moee.models.emotion_moe import EmotionMoE
    from moee.models.moee_net import MoEENetConfig

    module = GatingModule(loss=loss(), prototype_margin=4.0)
    latents = module.net.encode_emotion(EmotionInputs(label=torch.eye(6)))
    layers = [m for m in module.net.modules() if isinstance(m, EmotionMoE)]
    expected = torch.stack([F.cross_entropy(layer.context_gate(latents.mean(1)), torch.arange(6))
                            for layer in layers]).mean()
    own = module.emotion_routing_loss(latents, torch.eye(6))
    torch.testing.assert_close(own, expected)
    wrong = module.emotion_routing_loss(latents, torch.eye(6).roll(1, 0))
    assert own < 0.1 < wrong  # each label routes to its own expert by the prototype margin

    batch = {**mixed_batch, "emotion": replace(mixed_batch["emotion"],
                                               present=torch.ones(2, 4, dtype=torch.bool))}
    plain = module.alignment_loss(batch)
    module.alignment_routing_weight = 0.5
    routed = module.alignment_loss(batch)
    shares = module._share_targets(batch)  # each modality's term: its mse + 0.5 x its CE
    cross_entropies = [module.emotion_routing_loss(module.net.encode_emotion(
        only_modality(batch["emotion"], name, torch.ones(2, 4, dtype=torch.bool))), shares)
        for name in ("au", "text", "speech")]
    torch.testing.assert_close(routed, plain + 0.5 * torch.stack(cross_entropies).mean())
    assert float(torch.stack(cross_entropies).min()) > 0
    module.net.zero_grad(set_to_none=True)
    routed.backward()
    grads = {n for n, p in module.net.named_parameters() if p.grad is not None
             and p.grad.abs().sum() > 0}
    assert not any(".context_gate." in n or ".global_gate." in n for n in grads)
    for modality in ("au", "text", "speech"):
        assert any(n.startswith(f"emotion_to_latents.to_queries.{modality}.") for n in grads)
    no_gates = GatingModule(loss=loss(), net=MoEENetConfig(num_experts=1))
    assert float(no_gates.emotion_routing_loss(latents, torch.eye(6))) == 0.0
    with pytest.raises(ValueError, match="alignment_routing_weight must be >= 0"):
        GatingModule(loss=loss(), alignment_routing_weight=-0.5)


def test_gating_without_moe_trains_the_modality_paths_and_skips_routing(mixed_batch):
    """The "w/o MoE" ablation's gating stage: one cross-attention, no gates to record or
    route; the alignment term still trains the AU, text and speech paths."""
    from moee.models.moee_net import MoEENetConfig

    module = GatingModule(loss=loss(), routing_weight=0.5, alignment_weight=1.0,
                          net=MoEENetConfig(num_experts=1))
    batch = {**mixed_batch, "emotion": replace(mixed_batch["emotion"],
                                               present=torch.ones(2, 4, dtype=torch.bool))}
    terms = module.diffusion_step(batch, cfg_dropout=False)
    assert "routing" not in terms and terms["alignment"] > 0
    terms["total"].backward()
    assert any(p.grad is not None for n, p in module.net.named_parameters()
               if n.startswith("emotion_to_latents.to_queries.text."))


class _FirstStep(L.Callback):
    """What the module holds when its first denoising step starts."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if not hasattr(self, "params"):
            self.params = {n: p.detach().clone() for n, p in module.net.named_parameters()}
            self.lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]


def test_gating_warmup_aligns_the_modality_paths_before_the_first_step(tmp_path):
    """A fresh gating fit first trains the AU, text and speech paths on clip conditions alone
    (no frames): by its first denoising step their alignment loss has fallen, the gates,
    experts and label path are as they started, and the learning rate is the configured one."""
    from moee.cli import MoEECLI
    from moee.data.conditions import ConditionBatches, read_conditions
    from moee.data.sampling import SamplingOptions
    from tests.clips import write_test_shards

    shards = write_test_shards(tmp_path / "shards", num_frames=24, size=32)
    overrides = {
        "model.init_args.init_weights": "[]", "model.init_args.export_path": "null",
        "model.init_args.alignment_warmup": "40", "model.init_args.alignment_batch": "8",
        "model.init_args.optimizer.init_args.lr": "0.003",
        "data.init_args.train": str(shards), "data.init_args.val": str(shards),
        "data.init_args.num_workers": "0", "data.init_args.sampling.num_frames": "2",
        "data.init_args.batch_size": "2", "data.init_args.samples_per_epoch": "4",
        "trainer.max_steps": "1", "trainer.limit_val_batches": "0", "trainer.logger": "false",
        "trainer.enable_checkpointing": "false", "trainer.enable_progress_bar": "false",
        "trainer.default_root_dir": str(tmp_path)}
    config = Path(__file__).resolve().parents[2] / "configs/tiny/gating.yaml"
    cli = MoEECLI(run=False, args=["--config", str(config),
                                   *(f"--{k}={v}" for k, v in overrides.items())])
    module = cli.model
    probe = next(ConditionBatches(read_conditions(shards), SamplingOptions(num_frames=2), 16))
    with torch.no_grad():
        before = float(module.alignment_loss(probe))
    start = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    first = _FirstStep()
    cli.trainer.callbacks.append(first)
    cli.trainer.fit(module, datamodule=cli.datamodule)
    changed = {n for n, p in first.params.items() if not torch.equal(p, start[n])}
    assert any(n.startswith("emotion_to_latents.to_queries.au.") for n in changed)
    assert any(n.startswith("emotion_to_latents.to_queries.text.") for n in changed)
    assert not any("_gate." in n or ".experts." in n or ".to_queries.label." in n
                   for n in changed)
    assert first.lrs == [0.003] * len(first.lrs)  # restored after the warm-up's decay
    module.net.load_state_dict(first.params, strict=False)  # the weights at the first step
    with torch.no_grad():
        assert float(module.alignment_loss(probe)) < 0.7 * before


@pytest.mark.parametrize("option", [{"alignment_warmup": -1}, {"alignment_batch": 0},
                                    {"alignment_lr": 0.0}])
def test_gating_refuses_a_warmup_it_cannot_run(option):
    with pytest.raises(ValueError, match="alignment_warmup must be >= 0"):
        GatingModule(loss=loss(), **option)


def test_gating_warmup_needs_the_moee_datamodule():
    from moee.errors import MoEEError

    module = GatingModule(loss=loss(), alignment_warmup=5)
    module.trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False)
    with pytest.raises(MoEEError, match="reads its clips through MoEEDataModule"):
        module.on_train_start()


def test_gating_keeps_a_pretrained_stand_in_speech_encoder_frozen_and_exports_it(
        tmp_path, mixed_batch):
    from moee.models.moee_net import SPEECH_ENCODER

    batch = {**mixed_batch, "emotion": replace(mixed_batch["emotion"],
                                               present=torch.ones(2, 4, dtype=torch.bool))}
    speech = {n: p for n, p in GatingModule(loss=loss()).net.named_parameters()
              if n.startswith(f"{SPEECH_ENCODER}.")}
    pretrained = tmp_path / "speech_emotion.safetensors"  # as SpeechEmotionModule writes it
    save_file({n: p.detach() + 0.5 for n, p in speech.items()}, str(pretrained))
    module = GatingModule(loss=loss(), freeze_speech_encoder=True,
                          init_weights=[str(pretrained)])
    encoder = module.net.emotion_to_latents.speech_encoder
    loaded = {n: p.detach().clone() for n, p in module.net.named_parameters()
              if n.startswith(f"{SPEECH_ENCODER}.")}
    torch.testing.assert_close(loaded, {n: p.detach() + 0.5 for n, p in speech.items()})
    assert not any(p.requires_grad for p in encoder.parameters())
    module.alignment_loss(batch).backward()  # the alignment term reaches the query MLP only
    assert all(p.grad is None for p in encoder.parameters())
    assert module.net.emotion_to_latents.to_queries["speech"][-1].weight.grad.abs().sum() > 0
    exported = module.exported_weights()  # carried, so animation needs the gating export only
    torch.testing.assert_close({n: exported[n] for n in loaded}, loaded)
    checkpoint = {"state_dict": {f"net.{n}": v for n, v in module.net.state_dict().items()}}
    module.on_save_checkpoint(checkpoint)
    assert all(f"net.{n}" in checkpoint["state_dict"] for n in loaded)
    # without the flag the stand-in trains with its query MLP (and is exported as trained)
    free = GatingModule(loss=loss())
    assert all(p.requires_grad for p in free.net.emotion_to_latents.speech_encoder.parameters())


def test_gating_never_trains_or_exports_a_pretrained_speech_encoder(tmp_path):
    from moee.models.moee_net import SPEECH_ENCODER, MoEENetConfig
    from moee.models.pretrained import PRESETS, WeightSources, build_speech_encoder

    build_speech_encoder(PRESETS["tiny"], None).save_pretrained(tmp_path)
    module = GatingModule(loss=loss(), freeze_speech_encoder=True, net=MoEENetConfig(
        weights=WeightSources(speech_encoder=str(tmp_path))))
    assert not any(p.requires_grad
                   for p in module.net.emotion_to_latents.speech_encoder.parameters())
    assert not any(n.startswith(SPEECH_ENCODER) for n in module.exported_weights())


def test_gating_stage_starts_routing_each_label_to_its_expert(caplog):
    from moee.models.emotion_latents import EmotionInputs
    from moee.models.emotion_moe import EmotionMoE

    module = GatingModule(loss=loss(), prototype_margin=4.0)
    latents = module.net.encode_emotion(EmotionInputs(label=torch.eye(6)))
    layers = [m for m in module.net.modules() if isinstance(m, EmotionMoE)]
    assert layers
    for layer in layers:
        emotion_term = layer.context_gate(latents.mean(1))  # (6 labels, 6 experts)
        assert (emotion_term.argmax(1) == torch.arange(6)).all()
    # the Table 5 ablations run the same gating config: they have no global gate to set
    from moee.models.moee_net import MoEENetConfig
    for ablation in ({"global_gate": False}, {"num_experts": 1}):
        with caplog.at_level(logging.INFO, logger="moee.stages.gating"):
            caplog.clear()
            GatingModule(loss=loss(), prototype_margin=4.0, net=MoEENetConfig(**ablation))
        assert "prototype_margin ignored" in caplog.text, ablation
    random_start = GatingModule(loss=loss())
    assert not all((layer.context_gate(latents.mean(1)).argmax(1) == torch.arange(6)).all()
                   for layer in random_start.net.modules() if isinstance(layer, EmotionMoE))



def test_backbone_warms_each_clips_own_expert_and_neutral_clips_skip_the_moe(tmp_path):
    sad = BASIC_EMOTIONS.index("sad")
    clips = [make_test_clip(identity=f"id{i}", emotion=e, num_frames=12, size=64, seed=i)
             for i, e in enumerate(("sad", "neutral"))]
    batch = make_batch(clips, num_frames=4)
    module = BackboneModule(loss=loss(), warm_experts=True,
                            export_path=str(tmp_path / "backbone.safetensors"))
    assert {f"expert_{i}" for i in range(len(BASIC_EMOTIONS))} <= set(module.trainable_groups)
    assert "expert_0" not in BackboneModule(loss=loss()).trainable_groups  # the paper's stage 1
    with torch.no_grad():
        for name, p in module.net.named_parameters():
            if ".emotion.experts." in name:
                p.normal_(std=0.02)
        module.net.denoiser.unet.conv_out.weight.normal_(std=0.02)  # zero: reference_skip
    assert set(expert_grads(module, batch)) == {sad}
    neutral_only = {k: (v[1:] if torch.is_tensor(v) or isinstance(v, list) else v)
                    for k, v in batch.items() if k != "emotion"}
    neutral_only["emotion"] = batch["emotion"].select(slice(1, None))
    assert expert_grads(module, neutral_only) == {}  # the Emotion MoE is left out
    module.on_train_end()
    exported = load_file(tmp_path / "backbone.safetensors")
    assert any(f".emotion.experts.{sad}." in k for k in exported)
    assert any(k.startswith("emotion_to_latents.") for k in exported)  # still carried


def test_video_stage_with_frozen_spatial_layers_trains_motion_and_exports_the_whole_backbone(
        tmp_path):
    module = BackboneModule(loss=loss(), mode="video", warm_experts=True, freeze_spatial=True,
                            export_path=str(tmp_path / "backbone.safetensors"))
    assert {"audio", "temporal", "expert_0"} <= set(module.trainable_groups)
    assert not {"backbone", "reference"} & set(module.trainable_groups)
    trained = module.trained_parameters()
    assert not any(n.startswith(("denoiser.unet.", "reference_net.")) for n in trained)
    clips = [make_test_clip(identity="id0", emotion="sad", num_frames=12, size=64, seed=0)]
    module.diffusion_step(make_batch(clips, num_frames=4), cfg_dropout=False)["total"].backward()
    grads = {n for n, p in module.net.named_parameters() if p.grad is not None}
    assert any(".temporal." in n for n in grads) and any(".audio." in n for n in grads)
    assert not any(n.startswith(("denoiser.unet.", "reference_net.")) for n in grads)
    module.on_train_end()
    exported = load_file(tmp_path / "backbone.safetensors")
    spatial = {n for n, p in module.net.named_parameters()
               if n.startswith("denoiser.unet.") and not p.requires_grad}
    assert spatial and spatial <= set(exported)  # later stages load the backbone from it
    with pytest.raises(ValueError, match="freeze_spatial needs mode='video'"):
        BackboneModule(loss=loss(), mode="image", freeze_spatial=True)
