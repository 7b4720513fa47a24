"""Fréchet distance, FID and FVD: against scipy and closed forms, and their behaviour on data."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import FrechetInceptionDistance as TorchmetricsFID
from torchvision.transforms.functional import gaussian_blur

from moee.metrics import (
    FrechetInceptionDistance,
    FrechetVideoDistance,
    I3DFeatures,
    InceptionV3Features,
    RandomConvFeatures,
    RandomConvVideoFeatures,
    frechet_distance,
)


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The reference computation of pytorch-fid / TF-FID."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * covmean))


def random_gaussian(generator: torch.Generator, d: int, samples: int):
    """Mean and sample covariance of a random correlated Gaussian."""
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    x = torch.randn(samples, d, generator=generator, dtype=torch.float64) @ mixing
    return x.mean(0) + torch.randn(d, generator=generator, dtype=torch.float64), x.T.cov()


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_scipy(d):
    generator = torch.Generator().manual_seed(d)
    (mu1, s1), (mu2, s2) = (random_gaussian(generator, d, 4 * d) for _ in range(2))
    expected = scipy_frechet(*(t.numpy() for t in (mu1, s1, mu2, s2)))
    assert frechet_distance(mu1, s1, mu2, s2).item() == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_singular_covariance_matches_scipy():
    generator = torch.Generator().manual_seed(1)
    (mu1, s1), (mu2, s2) = (random_gaussian(generator, 32, 20) for _ in range(2))  # rank 19
    expected = scipy_frechet(*(t.numpy() for t in (mu1, s1, mu2, s2)))
    assert frechet_distance(mu1, s1, mu2, s2).item() == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([3.0, 1.0, 0.0])
    var1, var2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    expected = (mu1 - mu2).square().sum() + (var1.sqrt() - var2.sqrt()).square().sum()
    distance = frechet_distance(mu1, var1.diag(), mu2, var2.diag())
    assert distance.dtype == torch.float64
    assert distance.item() == pytest.approx(expected.item(), abs=1e-12)


def textured_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images ``(n, 3, size, size)`` in [0, 1] with both smooth shapes and fine texture."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=generator)
    coarse = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear")
    fine = torch.rand(n, 3, size, size, generator=generator)
    return (0.7 * coarse + 0.3 * fine).clamp(0, 1)


def fid_of(generated: torch.Tensor, target: torch.Tensor) -> float:
    metric = FrechetInceptionDistance(RandomConvFeatures(num_features=16, seed=0))
    metric.update(generated, target)
    return metric.compute().item()


def test_fid_of_a_set_with_itself_is_zero():
    images = textured_images(128)
    assert abs(fid_of(images, images)) < 1e-6


def test_fid_rises_monotonically_with_blur_and_noise():
    images = textured_images(256)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(images.shape, generator=generator)
    blurred = [fid_of(gaussian_blur(images, 9, sigma), images) for sigma in (0.5, 1.0, 2.0, 4.0)]
    noisy = [fid_of((images + level * noise).clamp(0, 1), images) for level in (0.05, 0.1, 0.2)]
    for scores in (blurred, noisy):
        assert scores[0] > 1e-5  # a set with itself gives ~1e-12
        assert all(a < b for a, b in zip(scores, scores[1:], strict=False)), scores


def test_fid_equals_torchmetrics_fid_with_the_same_extractor():
    extractor = RandomConvFeatures(num_features=16, seed=3)
    generated, target = textured_images(64, seed=1), textured_images(64, seed=2)
    reference = TorchmetricsFID(feature=extractor, normalize=True)
    reference.update(target, real=True)
    reference.update(generated, real=False)
    ours = FrechetInceptionDistance(extractor)
    ours.update(generated[:, None], target[:, None])  # clips of one frame
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-4)


def test_fid_counts_every_frame_of_every_clip():
    metric = FrechetInceptionDistance(RandomConvFeatures(num_features=8))
    clips = textured_images(12).reshape(3, 4, 3, 32, 32)
    metric.update(generated=clips)
    assert metric.fake_features_num_samples.item() == 12
    assert metric.real_features_num_samples.item() == 0
    with pytest.raises(RuntimeError, match="More than one sample is required"):
        metric.compute()


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A weights file of the FID Inception's layout (random values: nothing is downloaded)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict",
                      lambda self, state: None)
        network = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(network.state_dict(), path)
    return path


def test_fid_from_weights_is_torchmetrics_standard_fid(inception_weights):
    clips = [textured_images(4, seed=seed).reshape(2, 2, 3, 32, 32) for seed in (6, 7)]
    ours = FrechetInceptionDistance.from_weights(inception_weights)
    ours.update(*clips)
    reference = TorchmetricsFID(feature_extractor_weights_path=str(inception_weights),
                                normalize=True)
    reference.update(clips[0].flatten(0, 1), real=False)
    reference.update(clips[1].flatten(0, 1), real=True)
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-6)


def test_split_updates_merged_equal_one_update():
    generated, target = textured_images(40, seed=4), textured_images(40, seed=5)
    whole = FrechetInceptionDistance(RandomConvFeatures(num_features=8))
    whole.update(generated, target)
    halves = [FrechetInceptionDistance(RandomConvFeatures(num_features=8)) for _ in range(2)]
    halves[0].update(generated[:25], target[:10])
    halves[1].update(generated[25:], target[10:])
    halves[0].merge_state(halves[1])
    assert halves[0].compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)


def clips_of(images: torch.Tensor, frames: int) -> torch.Tensor:
    """Clips ``(n, frames, 3, H, W)`` of an image drifting sideways, one per image."""
    return torch.stack([images.roll(shift, dims=-1) for shift in range(frames)], dim=1)


def test_fvd_same_set_is_zero_and_motion_matters():
    extractor = RandomConvVideoFeatures(frame_features=8, seed=0)
    clips = clips_of(textured_images(48), 16)
    still = clips[:, :1].expand_as(clips)
    same, frozen = FrechetVideoDistance(extractor), FrechetVideoDistance(extractor)
    same.update(clips, clips)
    frozen.update(still, clips)
    assert abs(same.compute().item()) < 1e-6
    assert frozen.compute().item() > 1e-3


def test_fvd_cuts_clips_into_pieces_and_warns_on_short_clips():
    metric = FrechetVideoDistance(RandomConvVideoFeatures(frame_features=4), num_frames=4)
    metric.update(generated=clips_of(textured_images(3), 9))  # 2 pieces each, 1 frame dropped
    assert metric.generated_count.item() == 6
    with pytest.warns(UserWarning, match="standard protocol uses 4"):
        metric.update(target=clips_of(textured_images(3), 3))
    assert metric.target_count.item() == 3


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_i3d_features_call_the_torchscript_like_stylegan_v(tmp_path):
    class FakeI3D(torch.nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool):
            assert not rescale and resize and return_features
            return torch.stack([x.amin((1, 2, 3, 4)), x.amax((1, 2, 3, 4))], -1).repeat(1, 200)

    torch.jit.script(FakeI3D()).save(str(tmp_path / "i3d.pt"))
    extractor = I3DFeatures(tmp_path / "i3d.pt")
    clips = torch.rand(2, 5, 3, 8, 8) * 0.5 + 0.25
    features = extractor(clips)
    assert features.shape == (2, I3DFeatures.num_features)
    assert features[:, 0].min() >= -0.5 and features[:, 1].max() <= 0.5  # [0, 1] → [-1, 1]
    fvd = FrechetVideoDistance.from_weights(tmp_path / "i3d.pt")
    assert isinstance(fvd.feature_extractor.fn, I3DFeatures)


@pytest.mark.parametrize(
    ("build", "what", "download"),
    [
        (InceptionV3Features, "FID Inception weights", "pt_inception-2015-12-05"),
        (FrechetInceptionDistance.from_weights, "FID Inception weights", "metrics.fid.weights"),
        (FrechetVideoDistance.from_weights, "FVD I3D weights", "i3d_torchscript.pt"),
    ],
)
def test_missing_weights_are_one_clear_line(tmp_path, build, what, download):
    with pytest.raises(FileNotFoundError) as error:
        build(tmp_path / "absent.pth")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{what} not found at {tmp_path / 'absent.pth'}: download")
    assert download in message
