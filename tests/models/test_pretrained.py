"""Building from configs: SD-1.5 layout on meta, real-weight loading, the missing-weights error."""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel

from moee.models import pretrained
from moee.models.moee_net import MoEENet, MoEENetConfig, parameter_groups

SD15_UNET_PARAMETERS = 859_520_964


def test_sd15_builds_on_meta_with_sd15_unet_keys():
    with torch.device("meta"):
        net = MoEENet(MoEENetConfig(preset="sd15"))
        plain = UNet2DConditionModel(**pretrained.PRESETS["sd15"].unet)
    for unet in (net.denoiser.unet, net.reference_net.unet):
        assert sum(p.numel() for p in unet.parameters()) == SD15_UNET_PARAMETERS
        assert unet.state_dict().keys() == plain.state_dict().keys()
    groups = parameter_groups(net)
    assert sum(p.numel() for p in groups["backbone"]) == SD15_UNET_PARAMETERS
    assert len(net.denoiser.block_names) == 16


def test_missing_weights_is_one_clear_line(tmp_path):
    config = MoEENetConfig(weights=pretrained.WeightSources(unet=str(tmp_path / "nowhere")))
    with pytest.raises(pretrained.MissingWeightsError) as err:
        MoEENet(config)
    message = str(err.value)
    assert "\n" not in message and "SD-1.5 U-Net" in message and "nowhere" in message
    with pytest.raises(pretrained.MissingWeightsError, match="runwayml/stable-diffusion-v1-5"):
        MoEENet(MoEENetConfig.sd15())


def test_a_missing_speech_emotion_encoder_is_one_clear_line(tmp_path):
    """Its loader reads the checkpoint's config first (classifier or bare encoder): a path
    without one is the same one-line error as any missing part."""
    with pytest.raises(pretrained.MissingWeightsError) as err:
        pretrained.build_speech_encoder(pretrained.PRESETS["tiny"], str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "\n" not in message and "speech emotion encoder" in message and "nowhere" in message


def test_unet_weights_load_into_denoiser_and_reference_net(tmp_path):
    torch.manual_seed(3)
    saved = UNet2DConditionModel(**pretrained.PRESETS["tiny"].unet)
    saved.save_pretrained(tmp_path / "unet")  # the SD-1.5 folder layout, safetensors
    net = MoEENet(MoEENetConfig(weights=pretrained.WeightSources(unet=str(tmp_path))))
    channels = saved.config.in_channels
    for unet in (net.denoiser.unet, net.reference_net.unet):
        for key, value in saved.state_dict().items():
            if unet is net.denoiser.unet and key == "conv_in.weight":
                # concat_reference widens conv_in: the loaded weights see the noisy latent,
                # the reference latent's new inputs start at zero
                assert not unet.state_dict()[key][:, channels:].any()
                value = torch.cat([value, torch.zeros_like(value)], 1)
            if unet is net.denoiser.unet and key.startswith("conv_out.") \
                    and net.denoiser.reference_skip:  # starts by predicting the portrait
                value = torch.zeros_like(value)
            torch.testing.assert_close(unet.state_dict()[key], value, msg=key)
    unet_params = sum(p.numel() for p in saved.parameters())
    widened = saved.conv_in.weight.numel()
    assert net.load_report["loaded"] == 2 * unet_params + widened
    assert net.load_report["new"] == sum(p.numel() for p in net.parameters()) - \
        net.load_report["loaded"]


def test_animatediff_motion_modules_load():
    torch.manual_seed(0)
    net = MoEENet()
    adapter = MotionAdapter(**pretrained.PRESETS["tiny"].motion_adapter)
    counts = net.denoiser.load_motion_adapter(adapter.state_dict())
    assert counts["missing"] == 0 and counts["loaded"] > 0 and counts["unused"] > 0
    for ours, theirs in net.denoiser.motion_adapter_key_map().items():
        module = net.denoiser.get_submodule(ours)
        source = adapter.get_submodule(theirs)
        torch.testing.assert_close(module.proj_in.weight, source.proj_in.weight)


def test_random_parts_do_not_depend_on_the_global_rng():
    """Frozen random parts are never saved, so each stage and inference must rebuild them equal."""
    from moee.models.moee_net import MoEENet, MoEENetConfig, parameter_groups

    torch.manual_seed(1)
    first = MoEENet(MoEENetConfig())
    torch.manual_seed(2)
    torch.rand(1000)
    second = MoEENet(MoEENetConfig())
    frozen = {id(p) for p in parameter_groups(first)["frozen"]}
    names = [n for n, p in first.named_parameters() if id(p) in frozen]
    assert names
    for name in names:
        assert torch.equal(first.get_parameter(name), second.get_parameter(name)), name


def test_null_weight_source_from_the_command_line_means_random():
    from moee.models.pretrained import WeightSources

    assert WeightSources(vae="None", unet="null").vae is None
    assert WeightSources(vae="runs/tiny/weights/vae").vae == "runs/tiny/weights/vae"
