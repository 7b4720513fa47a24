"""Training stages: the objective and loss against reference maths, freezing, hand-off, resume."""

import math
from dataclasses import replace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.models import vgg19

from moee.inference.pipeline import MoEEPipeline
from moee.inference.sampling import make_scheduler
from moee.models.objective import DiffusionObjective
from moee.models.pretrained import PRESETS
from moee.models.weights import ExportsDisagreeError, MissingCheckpointError, trained_objective
from moee.stages import BackboneModule, ExpertModule, GatingModule
from moee.stages.losses import CHEEKS, EXPRESSION_LANDMARKS, MoEELoss, expression_weight_map
from tests.clips import make_batch, make_test_clip


def light_loss():
    return MoEELoss(pixel_weight=0.5, perceptual_weights="random", perceptual_depth=1)


@pytest.fixture(scope="module")
def batch():
    clips = [make_test_clip(identity=f"id{i}", emotion="sad", num_frames=12, size=64, seed=i,
                            text="her brows are lowered")  # every emotion modality present
             for i in range(2)]
    return make_batch(clips, num_frames=4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_objective_round_trip(prediction_type):
    objective = DiffusionObjective(prediction_type=prediction_type)
    latents, noise = torch.randn(3, 2, 4, 8, 8), torch.randn(3, 2, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    noisy = objective.add_noise(latents, noise, t)
    alpha_bar = objective.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noisy, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise)
    x0 = objective.predict_x0(noisy, objective.target(latents, noise, t), t)
    torch.testing.assert_close(x0, latents, atol=1e-3, rtol=1e-3)


def test_zero_terminal_snr_and_noise_offset():
    objective = DiffusionObjective(prediction_type="v_prediction", zero_terminal_snr=True,
                                   noise_offset=0.1)
    assert objective.scheduler.alphas_cumprod[-1] < 1e-6
    noise = objective.sample_noise(torch.zeros(64, 1, 4, 8, 8))
    per_channel_mean = noise.mean((-1, -2)).flatten()
    assert per_channel_mean.std() > 0.08  # the offset is shared within a channel


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_timestep_power_draws_density_t_to_the_p_minus_1(power):
    objective = DiffusionObjective(timestep_power=power)
    t = objective.sample_timesteps(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    quarters = torch.bincount(t // 250, minlength=4).float() / t.numel()
    expected = torch.tensor([(q + 1) ** power - q**power for q in range(4)]) / 4**power
    torch.testing.assert_close(quarters, expected, atol=0.005, rtol=0)  # CDF (t/T)^p
    with pytest.raises(ValueError, match="timestep_power must be positive"):
        DiffusionObjective(timestep_power=0)


def test_timestep_mixture_draws_the_weighted_sum_of_its_densities():
    objective = DiffusionObjective(timestep_power=[2.0, 0.5], timestep_shares=[3, 1])
    t = objective.sample_timesteps(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999
    tenths = torch.bincount(t // 100, minlength=10).float() / t.numel()
    edges = torch.arange(11, dtype=torch.float64) / 10
    cdf = 0.75 * edges**2 + 0.25 * edges**0.5
    torch.testing.assert_close(tenths, cdf.diff().float(), atol=0.005, rtol=0)
    assert tenths[0] > 0.08  # the recipe's power 2 alone puts 1 % below t = 100
    for shares in ([1.0], [1.0, -1.0]):
        with pytest.raises(ValueError, match="one non-negative weight per timestep_power"):
            DiffusionObjective(timestep_power=[2.0, 0.5], timestep_shares=shares)


def test_pixel_weight_is_the_papers_cosine():
    objective = DiffusionObjective()
    t = torch.tensor([0, 250, 500, 999])
    expected = torch.cos(t * math.pi / 2000)
    torch.testing.assert_close(objective.pixel_weight(t), expected)
    assert objective.pixel_weight(t).diff().lt(0).all()


def test_loss_terms_against_reference():
    loss = light_loss()
    prediction, target = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    decoded, frames = torch.rand(2, 1, 3, 32, 32) * 2 - 1, torch.rand(2, 1, 3, 32, 32) * 2 - 1
    w = torch.tensor([1.0, 0.25])
    terms = loss(prediction, target, decoded, frames, w)
    l1 = ((decoded - frames).abs().mean((1, 2, 3, 4)) * w).mean()
    features = vgg19().features[:4]  # relu1_2, the loss's one tap here, with its weights
    features.load_state_dict({key.removeprefix("features."): value for key, value
                              in loss.perceptual.features.state_dict().items()})
    normalise = loss.perceptual
    a = features(((decoded[:, 0] + 1) / 2 - normalise.mean) / normalise.std)
    b = features(((frames[:, 0] + 1) / 2 - normalise.mean) / normalise.std)
    perceptual = ((a - b).square().flatten(1).mean(1) * w).mean()
    torch.testing.assert_close(terms["latent"], F.mse_loss(prediction, target))
    torch.testing.assert_close(terms["l1"], l1)
    torch.testing.assert_close(terms["perceptual"], perceptual)
    torch.testing.assert_close(terms["total"], terms["latent"] + 0.5 * (l1 + perceptual))
    assert set(MoEELoss(pixel_weight=0)(prediction, target)) == {"latent", "total"}


def test_expression_map_weights_the_expressive_landmarks_and_the_loss_against_reference():
    landmarks = torch.full((1, 2, 68, 2), float("nan"))
    landmarks[0, 0, 48] = torch.tensor([0.25, 0.75])  # one mouth point (x, y) in frame 0
    weights = expression_weight_map(landmarks, (16, 16), gain=3.0, sigma=0.05)
    assert weights.shape == (1, 2, 1, 16, 16)
    row, col = divmod(int(weights[0, 0, 0].argmax()), 16)
    assert (row, col) in {(11, 3), (11, 4), (12, 3), (12, 4)}  # y=0.75 -> row 12, x=0.25 -> col 4
    assert 3.0 < float(weights.max()) <= 4.0 and float(weights[0, 0, 0, 0, 15]) == 1.0
    torch.testing.assert_close(weights[0, 1], torch.ones(1, 16, 16))  # no finite landmark: 1
    # every pixel's weight is 1 + gain · the nearest point's Gaussian, here from its definition
    points = torch.rand(1, 1, 68, 2)
    centres = (torch.arange(16) + 0.5) / 16
    pixels = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1)  # h w (x, y)
    map_points = torch.cat([points[0, 0, list(EXPRESSION_LANDMARKS)],
                            torch.stack([(points[0, 0, a] + points[0, 0, b]) / 2
                                         for a, b in CHEEKS])])
    d2 = (pixels[None] - map_points[:, None, None]).square().sum(-1)  # k h w
    expected_map = 1 + 3.0 * torch.exp(-d2 / (2 * 0.05**2)).amax(0)
    torch.testing.assert_close(expression_weight_map(points, (16, 16), 3.0, 0.05)[0, 0, 0],
                               expected_map)
    loss = MoEELoss(pixel_weight=0, expression_weight=3.0, expression_sigma=0.05)
    prediction, target = torch.randn(1, 2, 4, 16, 16), torch.randn(1, 2, 4, 16, 16)
    expected = ((prediction - target).square() * weights).sum() / weights.expand_as(
        prediction).sum()
    torch.testing.assert_close(loss(prediction, target, landmarks=landmarks)["latent"], expected)
    # without landmarks (or with the weight off) it is the paper's plain mean
    torch.testing.assert_close(loss(prediction, target)["latent"], F.mse_loss(prediction, target))


def test_chroma_weight_weighs_colour_against_brightness_per_pixel():
    frames, truth = torch.rand(2, 3, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 3, 8, 8) * 2 - 1
    prediction, target = (F.pixel_unshuffle(x.flatten(0, 1), 2).unflatten(0, (2, 3))
                          for x in (frames, truth))  # the patch codec's latents (b f 12 h w)
    error = (frames - truth).movedim(2, -1)  # every pixel's RGB error
    grey = error.mean(-1, keepdim=True)
    brightness, colour = 3 * grey.square().sum(-1), (error - grey).square().sum(-1)
    for weight in (1.0, 8.0):
        expected = (brightness + weight * colour).sum() / prediction.numel()
        latent = MoEELoss(pixel_weight=0, chroma_weight=weight)(prediction, target)["latent"]
        torch.testing.assert_close(latent, expected)
    # an l1 latent term takes absolute values on the same axes, colour weighted 8x
    opponent = torch.stack([error.sum(-1) / 3**0.5, (error[..., 0] - error[..., 1]) / 2**0.5,
                            (error[..., 0] + error[..., 1] - 2 * error[..., 2]) / 6**0.5], -1)
    expected = (opponent[..., 0].abs() + 8 * opponent[..., 1:].abs().sum(-1)).sum()
    torch.testing.assert_close(MoEELoss(pixel_weight=0, latent_loss="l1", chroma_weight=8.0)(
        prediction, target)["latent"], expected / prediction.numel())
    grey_error = grey.movedim(-1, 2).expand(-1, -1, 3, -1, -1)  # the same error in every colour
    grey_latents = F.pixel_unshuffle(grey_error.flatten(0, 1), 2).unflatten(0, (2, 3))
    torch.testing.assert_close(MoEELoss(pixel_weight=0, chroma_weight=8.0)(
        target + grey_latents, target)["latent"], F.mse_loss(target + grey_latents, target))
    with pytest.raises(ValueError, match="chroma_weight must be positive"):
        MoEELoss(chroma_weight=0)


def test_a_chroma_weight_is_refused_where_latents_are_not_pixels(monkeypatch):
    # the tiny preset with its autoencoder instead of the patch codec: latents, not pixels
    monkeypatch.setitem(PRESETS, "tiny", replace(PRESETS["tiny"], patch_size=None))
    with pytest.raises(ValueError, match="latents that are pixels"):
        BackboneModule(loss=MoEELoss(pixel_weight=0, chroma_weight=4.0))


STAGES = [
    (BackboneModule, {"mode": "video"}, {"backbone", "reference", "audio", "temporal"}),
    (BackboneModule, {"mode": "image"}, {"backbone", "reference"}),
    (BackboneModule, {"mode": "image", "image_audio": True}, {"backbone", "reference", "audio"}),
    (ExpertModule, {"emotion": "sad"}, {"expert_4"}),
    (GatingModule, {}, {"gates", "emotion_modalities"}),
    (GatingModule, {"train_label_path": True}, {"gates", "emotion_modalities", "emotion_latents"}),
]


@pytest.mark.parametrize(("stage", "kwargs", "groups"), STAGES,
                         ids=["backbone-video", "backbone-image", "backbone-image-audio",
                              "expert", "gating", "gating-label-path"])
def test_only_the_stage_groups_train(stage, kwargs, groups, batch):
    from moee.models.moee_net import parameter_groups

    module = stage(loss=light_loss(), **kwargs)
    assert set(module.trainable_groups) == groups
    by_group = parameter_groups(module.net)
    trained = {id(p) for g in groups for p in by_group[g]}
    assert {id(p) for p in module.trained_parameters().values()} == trained
    optimizer = module.configure_optimizers()
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trained

    before = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    for _ in range(2):
        optimizer.zero_grad()
        module.diffusion_step(batch)["total"].backward()
        optimizer.step()
    changed = {n for n, p in module.net.named_parameters() if not torch.equal(p, before[n])}
    trained_names = set(module.trained_parameters())
    assert changed <= trained_names, f"frozen weights moved: {sorted(changed - trained_names)[:3]}"
    assert len(changed) > 0.5 * len(trained_names)
    if stage is ExpertModule:
        for name, p in module.net.named_parameters():
            if ".experts." in name and ".experts.4." not in name:
                assert p.grad is None


def test_lr_scales_set_each_groups_learning_rate():
    from functools import partial

    from moee.models.moee_net import parameter_groups

    module = BackboneModule(loss=light_loss(), mode="image", warm_experts=True,
                            optimizer=partial(torch.optim.AdamW, lr=1e-3),
                            lr_scales={"expert": 3, "reference": 0.5})
    by_group = parameter_groups(module.net)
    expected = {id(p): 1e-3 * scale for group, scale in
                [("backbone", 1), ("reference", 0.5)] + [(f"expert_{i}", 3) for i in range(6)]
                for p in by_group[group]}
    optimizer = module.configure_optimizers()
    lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lrs.keys() == expected.keys()
    assert all(math.isclose(lrs[k], v) for k, v in expected.items())
    with pytest.raises(ValueError, match="lr_scales names no parameter group: \\['experts'\\]"):
        BackboneModule(loss=light_loss(), lr_scales={"experts": 3})
    with pytest.raises(ValueError, match="lr_scales must be positive"):
        BackboneModule(loss=light_loss(), lr_scales={"expert": 0})


def test_lr_decay_ends_the_run_at_zero():
    from functools import partial

    module = BackboneModule(loss=light_loss(), mode="image", warm_experts=True, lr_decay=0.5,
                            optimizer=partial(torch.optim.SGD, lr=1.0), lr_scales={"expert": 3})
    module.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False)
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    factors = []
    for _ in range(11):
        factors.append([group["lr"] / group["lr_scale"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    expected = [1.0] * 6 + [0.8, 0.6, 0.4, 0.2, 0.0]  # flat for half the run, then to zero
    for step, lrs in enumerate(factors):
        assert all(math.isclose(lr, expected[step], abs_tol=1e-9) for lr in lrs), (step, lrs)
    with pytest.raises(ValueError, match="lr_decay must be in \\[0, 1\\] and without"):
        BackboneModule(loss=light_loss(), lr_decay=0.5,
                       lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1))


def test_image_stage_with_audio_hears_each_stills_own_frame(batch):
    module = BackboneModule(loss=light_loss(), mode="image", image_audio=True)
    pick = torch.tensor([1, 3])
    module.frame_pick = lambda _: pick
    heard = {}
    original = module.net.forward

    def spy(noisy, timesteps, conditions, **kwargs):
        heard["tokens"] = conditions.audio
        return original(noisy, timesteps, conditions, **kwargs)

    module.net.forward = spy
    module.diffusion_step(batch, cfg_dropout=False)["total"].backward()
    tokens = module.net.encode_audio(batch["audio"]).detach()
    torch.testing.assert_close(heard["tokens"].detach(), tokens[torch.arange(2), pick][:, None])
    assert any(".audio." in n and p.grad is not None for n, p in module.net.named_parameters())
    with pytest.raises(ValueError, match="image_audio needs mode='image'"):
        BackboneModule(loss=light_loss(), mode="video", image_audio=True)


def test_weights_hand_off_between_stages(tmp_path, batch):
    backbone = BackboneModule(loss=light_loss())
    optimizer = backbone.configure_optimizers()
    backbone.diffusion_step(batch)["total"].backward()
    optimizer.step()
    export = backbone.export(tmp_path / "backbone.safetensors")

    expert = ExpertModule(emotion="sad", loss=light_loss(), init_weights=[str(export)])
    for name, p in {**backbone.trained_parameters(), **backbone.carried_parameters()}.items():
        assert torch.equal(expert.net.get_parameter(name), p), name
    expert_export = expert.export(tmp_path / "expert_sad.safetensors")
    gating = GatingModule(loss=light_loss(), init_weights=[str(export), str(expert_export)])
    probe = next(n for n in expert.trained_parameters() if ".experts.4." in n)
    assert torch.equal(gating.net.get_parameter(probe), expert.net.get_parameter(probe))

    with pytest.raises(MissingCheckpointError, match="train the backbone first") as error:
        ExpertModule(emotion="sad", loss=light_loss(),
                     init_weights=[str(tmp_path / "missing.safetensors")])
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="per basic emotion"):
        ExpertModule(emotion="happily surprised")


def test_gating_keeps_the_label_latents_the_experts_learnt_on(batch):
    """The gating stage trains the AU, text and speech paths towards the label's latents,
    and never moves the label's latents themselves (the experts' inputs)."""
    from moee.models.emotion_latents import EmotionInputs

    torch.manual_seed(0)
    module = GatingModule(loss=light_loss(), alignment_weight=1.0)
    labels = EmotionInputs(label=torch.eye(6) * 0.8)
    encoder = module.net.emotion_to_latents
    with torch.no_grad():
        before = module.net.encode_emotion(labels)
    au_before = [p.detach().clone() for p in encoder.to_queries["au"].parameters()]
    optimizer = module.configure_optimizers()
    for _ in range(2):
        optimizer.zero_grad()
        terms = module.diffusion_step(batch)
        terms["total"].backward()
        optimizer.step()
    assert terms["alignment"] > 0
    with torch.no_grad():
        torch.testing.assert_close(module.net.encode_emotion(labels), before)
    au_after = encoder.to_queries["au"].parameters()
    assert not all(torch.equal(a, p) for a, p in zip(au_before, au_after))


def test_experts_share_the_backbone_exports_emotion_latents(tmp_path, batch):
    """The six experts train side by side: each must condition on the Emotion-to-Latents that
    the backbone export carries, whatever its seed, and exports that disagree are refused."""
    torch.manual_seed(1)
    backbone = BackboneModule(loss=light_loss())
    carried = backbone.carried_parameters()
    assert carried and all(n.startswith("emotion_to_latents.") for n in carried)
    assert not set(carried) & set(backbone.trained_parameters())
    export = str(backbone.export(tmp_path / "backbone.safetensors"))
    assert set(carried) <= set(load_file(export))
    # the other modalities' paths and random stand-in encoders are the gating stage's
    gating_only = tuple(f"emotion_to_latents.{part}." for part in (
        "text_encoder", "speech_encoder", "to_queries.au", "to_queries.text", "to_queries.speech"))
    assert not [n for n in load_file(export) if n.startswith(gating_only)]

    exports = []
    for seed, emotion in ((2, "sad"), (3, "happy")):
        torch.manual_seed(seed)  # a different seed must not change what the expert sees
        expert = ExpertModule(emotion=emotion, loss=light_loss(), init_weights=[export])
        optimizer = expert.configure_optimizers()
        expert.diffusion_step(batch)["total"].backward()
        optimizer.step()
        for name, p in carried.items():
            assert torch.equal(expert.net.get_parameter(name), p), name
        exports.append(str(expert.export(tmp_path / f"expert_{emotion}.safetensors")))
        assert not any(k.startswith("emotion_to_latents.") for k in load_file(exports[-1]))
    GatingModule(loss=light_loss(), init_weights=[export, *exports])

    # experts that each trained their own Emotion-to-Latents (the old recipe) cannot be mixed
    for index, path in enumerate(exports):
        weights = load_file(path)
        weights["emotion_to_latents.null_latent"] = torch.full_like(
            carried["emotion_to_latents.null_latent"], float(index))
        save_file(weights, path, metadata={"stage": "ExpertModule"})
    with pytest.raises(ExportsDisagreeError, match="emotion_to_latents.null_latent") as error:
        GatingModule(loss=light_loss(), init_weights=[export, *exports])
    assert "\n" not in str(error.value)
    with pytest.raises(ExportsDisagreeError):
        MoEEPipeline.from_weights(backbone.net.config, [export, *exports], progress=False)


def test_exports_record_the_objective_that_later_stages_and_sampling_use(tmp_path):
    v_objective = DiffusionObjective("v_prediction", zero_terminal_snr=True)
    backbone = BackboneModule(loss=light_loss(), objective=v_objective)
    export = str(backbone.export(tmp_path / "backbone.safetensors"))
    recorded = trained_objective([export])
    assert recorded.schedule == v_objective.schedule
    assert recorded.scheduler.alphas_cumprod[-1] == 0  # zero terminal SNR came back too
    assert make_scheduler("dpmpp", recorded).config.prediction_type == "v_prediction"

    with pytest.raises(ValueError, match="set model.init_args.objective"):
        ExpertModule(emotion="sad", loss=light_loss(), init_weights=[export])
    expert = ExpertModule(emotion="sad", loss=light_loss(), objective=v_objective,
                          init_weights=[export])
    epsilon_export = str(BackboneModule(loss=light_loss()).export(tmp_path / "eps.safetensors"))
    with pytest.raises(ValueError, match="different diffusion objectives"):
        trained_objective([export, epsilon_export])
    pipeline = MoEEPipeline.from_weights(expert.net.config, [export], progress=False)
    assert pipeline.scheduler.config.prediction_type == "v_prediction"


def test_checkpoint_holds_only_trained_weights_and_resume_continues(tmp_path, batch):
    data = torch.utils.data.DataLoader([batch] * 4, batch_size=None)

    def trainer(max_steps):
        return L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, enable_checkpointing=False)

    first = ExpertModule(emotion="sad", loss=light_loss())
    run = trainer(2)
    run.fit(first, train_dataloaders=data)
    run.save_checkpoint(tmp_path / "step2.ckpt")
    checkpoint = torch.load(tmp_path / "step2.ckpt", weights_only=True)
    assert {k.removeprefix("net.") for k in checkpoint["state_dict"]} == set(
        first.trained_parameters())

    resumed = ExpertModule(emotion="sad", loss=light_loss())
    again = trainer(4)
    again.fit(resumed, train_dataloaders=data, ckpt_path=tmp_path / "step2.ckpt")
    assert again.global_step == 4
    adam_state = again.optimizers[0].state_dict()["state"]
    assert all(int(s["step"]) == 4 for s in adam_state.values())


def test_ema_shadows_the_trained_weights_and_validation_measures_them(batch):
    module = ExpertModule(emotion="sad", loss=light_loss(), ema_decay=0.5)
    optimizer = module.configure_optimizers()
    params = module.trained_parameters()
    expected = {name: p.detach().clone() for name, p in params.items()}
    for _ in range(2):
        optimizer.zero_grad()
        module.diffusion_step(batch)["total"].backward()
        optimizer.step()
        module.on_train_batch_end(None, batch, 0)
        expected = {name: 0.5 * expected[name] + 0.5 * params[name].detach() for name in params}
    for name in params:
        torch.testing.assert_close(module.ema.shadow[name], expected[name])
        torch.testing.assert_close(module.exported_weights()[name], expected[name])
    live = {name: p.detach().clone() for name, p in params.items()}
    assert any(not torch.equal(live[name], expected[name]) for name in params)
    module.on_validation_epoch_start()  # validation runs on the weights the stage exports
    assert all(torch.equal(params[name], expected[name]) for name in params)
    module.on_validation_epoch_end()  # and checkpoints and training see the live ones again
    assert all(torch.equal(params[name], live[name]) for name in params)
    torch.testing.assert_close(module.ema.shadow, expected)
    module.to(torch.float64)  # the shadows follow the stage, as they follow it to the GPU
    assert all(t.dtype == torch.float64 for t in module.ema.shadow.values())
    module.on_train_batch_end(None, batch, 0)
    torch.testing.assert_close(module.ema.shadow, {
        n: 0.5 * expected[n].double() + 0.5 * live[n].double() for n in expected})


def test_ema_is_torchs_averaged_model_and_resumes_from_a_checkpoint(tmp_path, batch):
    """The EMA after a few optimizer steps is decay·ema + (1 − decay)·param from the initial
    weights; a checkpoint carries it by parameter name, and a resumed run continues it."""
    decay = 0.75
    data = torch.utils.data.DataLoader([batch] * 4, batch_size=None)
    expected = {}

    class Reference(L.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            for name, p in module.trained_parameters().items():
                expected[name] = decay * expected[name] + (1 - decay) * p.detach()

    def trainer(max_steps):
        return L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, enable_checkpointing=False,
                         callbacks=[Reference()])

    first = ExpertModule(emotion="sad", loss=light_loss(), ema_decay=decay)
    assert isinstance(first.ema.average, torch.optim.swa_utils.AveragedModel)
    assert not any(p.requires_grad for p in first.ema.parameters())
    expected.update({n: p.detach().clone() for n, p in first.trained_parameters().items()})
    run = trainer(2)
    run.fit(first, train_dataloaders=data)
    torch.testing.assert_close(first.ema.shadow, expected)
    run.save_checkpoint(tmp_path / "step2.ckpt")
    checkpoint = torch.load(tmp_path / "step2.ckpt", weights_only=True)
    torch.testing.assert_close(checkpoint["ema"], expected)
    assert not any(k.startswith("ema.") for k in checkpoint["state_dict"])

    resumed = ExpertModule(emotion="sad", loss=light_loss(), ema_decay=decay)
    trainer(4).fit(resumed, train_dataloaders=data, ckpt_path=tmp_path / "step2.ckpt")
    torch.testing.assert_close(resumed.ema.shadow, expected)
    torch.testing.assert_close({n: resumed.exported_weights()[n] for n in expected}, expected)


def test_validation_in_a_run_measures_the_ema_and_checkpoints_see_the_live_weights(batch):
    """In a real fit: validation batches run on the EMA weights, and by ``on_validation_end``,
    where ModelCheckpoint saves, the live weights are back (else a checkpoint would hold the
    EMA as the weights to resume from)."""
    seen = {}

    class Watch(L.Callback):
        def on_validation_start(self, trainer, module):
            seen["live"] = {n: p.detach().clone() for n, p in module.trained_parameters().items()}

        def on_validation_batch_start(self, trainer, module, *args):
            seen["validated"] = {n: p.detach().clone()
                                 for n, p in module.trained_parameters().items()}
            seen["ema"] = {n: t.clone() for n, t in module.ema.shadow.items()}

        def on_validation_end(self, trainer, module):
            seen["saved"] = {n: p.detach().clone() for n, p in module.trained_parameters().items()}

    data = torch.utils.data.DataLoader([batch] * 2, batch_size=None)
    module = ExpertModule(emotion="sad", loss=light_loss(), ema_decay=0.5)
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, limit_val_batches=1,
              val_check_interval=2, num_sanity_val_steps=0, callbacks=[Watch()]).fit(
        module, train_dataloaders=data, val_dataloaders=data)
    live = seen["live"]
    assert any(not torch.equal(live[name], seen["validated"][name]) for name in live)
    for name in live:  # validated: the EMA the stage exports (the last step's, here)
        assert torch.equal(seen["validated"][name], module.ema.shadow[name]), name
        assert torch.equal(seen["saved"][name], live[name]), name


def test_downsampled_images_average_each_block_and_keep_any_mouth(batch):
    from moee.data.batch import downsampled_images

    small = downsampled_images(batch, 32)
    for key in ("frames", "reference", "motion_frames"):
        full = batch[key]
        blocks = full.reshape(*full.shape[:-2], 32, 2, 32, 2).mean((-3, -1))
        torch.testing.assert_close(small[key], blocks)
    mouth = batch["mouth_mask"].reshape(-1, 1, 32, 2, 32, 2).amax((-3, -1))
    assert torch.equal(small["mouth_mask"], mouth)
    assert small["landmarks"] is batch["landmarks"] and batch["frames"].shape[-1] == 64
    with pytest.raises(ValueError, match="cannot downsample 64 px frames to 128 px"):
        downsampled_images(batch, 128)


def test_coarse_steps_train_at_the_coarse_size_then_at_full_size(tmp_path, batch):
    module = BackboneModule(loss=light_loss(), mode="image", coarse_size=32, coarse_steps=2)
    seen = []
    original = module.diffusion_step

    def spy(batch, **kwargs):
        seen.append(batch["frames"].shape[-1])
        return original(batch, **kwargs)

    module.diffusion_step = spy
    L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False,
              default_root_dir=tmp_path).fit(
        module, train_dataloaders=torch.utils.data.DataLoader([batch] * 3, batch_size=None))
    assert seen == [32, 32, 64]
    with pytest.raises(ValueError, match="needs a coarse_size that is a positive multiple of 8"):
        BackboneModule(loss=light_loss(), coarse_size=36, coarse_steps=2)
    with pytest.raises(ValueError, match="positive multiple of 8"):
        BackboneModule(loss=light_loss(), coarse_steps=2)
    for steps in (0, -1):  # a size with no steps to train at it
        with pytest.raises(ValueError, match="coarse_size 32 needs a positive coarse_steps"):
            BackboneModule(loss=light_loss(), coarse_size=32, coarse_steps=steps)
