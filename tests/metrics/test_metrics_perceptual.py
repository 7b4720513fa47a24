"""LPIPS: zero on identical frames, positive on different ones, weights from local files."""

import lpips
import pytest
import torch
import torchvision
from torch import nn

from moee.metrics import FeatureDistance, LearnedPerceptualSimilarity, LPIPSNetwork

# lpips builds its trunk with torchvision's deprecated ``pretrained=`` argument
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torchvision.models._utils")


@pytest.fixture(scope="module")
def seeded_lpips() -> lpips.LPIPS:
    """LPIPS with a random but seeded AlexNet trunk and random linear layers (no download)."""
    torch.manual_seed(0)
    return lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)


class TwoLayerFeatures(nn.Module):
    """A small multi-layer feature net, as a SynthEmo probe would be."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = self.first(x).relu()
        return [h1, self.second(h1).relu()]


@pytest.mark.parametrize("probe", [False, True])
def test_lpips_is_zero_for_identical_and_positive_for_different_frames(seeded_lpips, probe):
    distance = FeatureDistance(TwoLayerFeatures()) if probe else seeded_lpips
    clips = torch.rand(2, 3, 3, 32, 32)
    other = torch.rand(2, 3, 3, 32, 32)
    same, different = LearnedPerceptualSimilarity(distance), LearnedPerceptualSimilarity(distance)
    same.update(clips, clips)
    different.update(clips, other)
    assert same.compute().item() == pytest.approx(0.0, abs=1e-7)
    assert different.compute().item() > 1e-3
    assert different.count.item() == 6  # mean over all 2 × 3 frame pairs


def test_lpips_is_the_mean_over_frames_of_the_network_distance(seeded_lpips):
    net = seeded_lpips
    clips, other = torch.rand(2, 4, 3, 32, 32), torch.rand(2, 4, 3, 32, 32)
    metric = LearnedPerceptualSimilarity(net)
    metric.update(clips, other)
    per_frame = net(clips.flatten(0, 1), other.flatten(0, 1), normalize=True).flatten()
    assert metric.compute().item() == pytest.approx(per_frame.mean().item(), rel=1e-5)


def test_lpips_network_loads_the_torchvision_trunk_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    features = torchvision.models.alexnet(weights=None).features
    checkpoint = {f"features.{key}": value for key, value in features.state_dict().items()}
    torch.save(checkpoint, tmp_path / "alexnet.pth")
    network = LPIPSNetwork(tmp_path / "alexnet.pth")
    trunk = network.net.net.state_dict()
    assert torch.equal(trunk["slice1.0.weight"], features[0].weight)
    assert torch.equal(trunk["slice5.10.bias"], features[10].bias)
    calibrated = torch.load(
        f"{lpips.__path__[0]}/weights/v0.1/alex.pth", map_location="cpu", weights_only=True
    )
    assert torch.equal(network.net.lin0.model[1].weight, calibrated["lin0.model.1.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert network(x, x).abs().max() < 1e-7


def test_lpips_network_rejects_a_checkpoint_of_another_net(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision alex checkpoint"):
        LPIPSNetwork(tmp_path / "other.pth")


@pytest.mark.parametrize(
    ("net", "file"), [("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")]
)
def test_missing_lpips_weights_are_one_clear_line(tmp_path, net, file):
    with pytest.raises(FileNotFoundError) as error:
        LearnedPerceptualSimilarity.from_weights(tmp_path / "absent.pth", net=net)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"LPIPS {net} backbone weights not found at {tmp_path}")
    assert file in message and "metrics.lpips.backbone_weights" in message
