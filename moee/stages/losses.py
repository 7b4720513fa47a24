"""The paper's loss: L = L_latent + λ·w(t)·(‖I_p − I_gt‖₁ + ‖VGG19(I_p) − VGG19(I_gt)‖²).

Optionally every term is weighted per pixel by an *expression map*
(:func:`expression_weight_map`): 1 everywhere plus a bump of height ``expression_weight`` on
the brows, eyes, cheeks and mouth of each frame's face landmarks, so that the few pixels that
carry an emotion (a brow lowered by two pixels, lifted mouth corners) weigh as much as the
hair and background they are lost in (region-weighted losses as in Hallo, Xu et al. 2024).

Where the latents are pixels (the tiny preset's patch codec) the latent term can also weigh
colour against brightness (``chroma_weight``): the error is taken in an orthonormal basis of
each pixel's colour, the grey axis and the two opponent axes orthogonal to it, and the
opponent parts count ``chroma_weight`` times. A blush changes a face's colour but hardly its
brightness, and its contrast is a fifth of a dark brow's, so a plain squared error weighs it
some 25 times less than a brow moved over as many pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchvision.models import vgg19
from torchvision.models.feature_extraction import create_feature_extractor

from moee.models.pretrained import MissingWeightsError

EXPRESSION_LANDMARKS = (*range(17, 27), *range(36, 48), *range(48, 68))
"""iBUG-68 points whose surroundings carry an expression: brows, eyes, mouth."""
CHEEKS = ((36, 48), (45, 54))
"""(outer eye corner, mouth corner) pairs: a cheek sits between the two of each pair."""

OPPONENT_COLOURS = ((3**-0.5, 3**-0.5, 3**-0.5),
                    (2**-0.5, -(2**-0.5), 0.0),
                    (6**-0.5, 6**-0.5, -2 * 6**-0.5))
"""An orthonormal basis of RGB: brightness (the grey axis), red-green and yellow-blue."""

VGG_LAYERS = (3, 8, 17, 26, 35)
"""Indices in torchvision's VGG19 ``features`` after relu1_2, 2_2, 3_4, 4_4 and 5_4."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGPerceptual(nn.Module):
    """Mean squared distance of VGG19 activations (relu1_2 … relu5_4) between two images.

    Args:
        weights: ``"imagenet"`` loads torchvision's IMAGENET1K_V1 weights from the torch hub
            cache; a path loads a local ``vgg19-dcbb9e9d.pth``; ``"random"`` keeps random
            weights (tests and CPU configs, where the term is a smoothness prior only).
        depth: how many of the five stages to use (fewer is cheaper).
    """

    def __init__(self, weights: str = "imagenet", depth: int = 5) -> None:
        super().__init__()
        net = vgg19()
        if weights != "random":
            net.load_state_dict(_load_vgg_state(weights))
        taps = {f"features.{index}": f"features.{index}" for index in VGG_LAYERS[:depth]}
        self.features = create_feature_extractor(net, return_nodes=taps).eval()
        self.features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> VGGPerceptual:
        """A frozen feature net: always in eval mode."""
        return super().train(False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Images (n 3 H W) in [-1, 1] -> perceptual distance per image (n,)."""
        x = torch.cat([prediction, target])
        taps = self.features(((x + 1) / 2 - self.mean) / self.std)
        distance = x.new_zeros(prediction.shape[0])
        for activation in taps.values():
            predicted, real = activation.chunk(2)
            distance = distance + (predicted - real).square().flatten(1).mean(1)
        return distance / len(taps)


def _load_vgg_state(weights: str) -> dict[str, torch.Tensor]:
    if weights == "imagenet":
        from torchvision.models import VGG19_Weights

        try:
            return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except OSError as error:
            raise MissingWeightsError(
                "VGG19 ImageNet weights are not in the torch hub cache and cannot be downloaded "
                f"({type(error).__name__}); put vgg19-dcbb9e9d.pth in $TORCH_HOME/hub/checkpoints"
                " or set loss.perceptual_weights to its path"
            ) from None
    path = Path(weights)
    if not path.is_file():
        raise MissingWeightsError(
            f"VGG19 weights not found at {weights!r}: download vgg19-dcbb9e9d.pth from "
            "torchvision and give its path, or use 'imagenet' or 'random'"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def expression_weight_map(landmarks: torch.Tensor, size: tuple[int, int], gain: float,
                          sigma: float = 0.04) -> torch.Tensor:
    """Per-pixel loss weights ``1 + gain · max_k exp(−‖p − l_k‖² / 2σ²)`` over the expressive
    landmarks ``l_k`` (:data:`EXPRESSION_LANDMARKS` and the cheek centres of :data:`CHEEKS`).

    Args:
        landmarks: (b f 68 2) iBUG-68 points in [0, 1] (x, y); non-finite points are ignored.
        size: (h, w) of the map (a latent's or an image's grid).
        gain: height of the bumps (0: all ones).
        sigma: bump radius as a fraction of the image side.

    Returns:
        (b f 1 h w)
    """
    h, w = size
    cheeks = torch.stack([(landmarks[..., a, :] + landmarks[..., b, :]) / 2 for a, b in CHEEKS],
                         -2)
    points = torch.cat([landmarks[..., list(EXPRESSION_LANDMARKS), :], cheeks], -2).float()
    ys = (torch.arange(h, device=points.device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=points.device, dtype=torch.float32) + 0.5) / w
    # a Gaussian bump is separable, exp(-dy²/2σ²)·exp(-dx²/2σ²): one product per pixel and point
    bump_x = torch.exp(-(xs - points[..., 0, None]) ** 2 / (2 * sigma**2)).nan_to_num(0.0)
    bump_y = torch.exp(-(ys - points[..., 1, None]) ** 2 / (2 * sigma**2)).nan_to_num(0.0)
    bumps = (bump_y[..., :, None] * bump_x[..., None, :]).amax(2)  # b f h w
    return (1 + gain * bumps)[:, :, None]


def opponent_colours(pixels: torch.Tensor, chroma_scale: float = 1.0) -> torch.Tensor:
    """Pixel-patch latents (..., 3p², h, w; colour-major, as ``pixel_unshuffle`` lays them
    out) in the :data:`OPPONENT_COLOURS` basis, the two colour axes times ``chroma_scale``."""
    basis = torch.tensor(OPPONENT_COLOURS, dtype=pixels.dtype, device=pixels.device)
    basis[1:] *= chroma_scale
    colours = pixels.unflatten(-3, (3, -1))
    return torch.einsum("ij,...jphw->...iphw", basis, colours).flatten(-4, -3)


def _weighted_mean(error: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    # the weights are normalised to mean 1, so the loss keeps its scale (and learning rates)
    if weight is None:
        return error.mean()
    weight = weight.expand_as(error)
    return (error * weight).sum() / weight.sum()


class MoEELoss(nn.Module):
    """Latent regression plus the time-weighted pixel and perceptual terms of the paper.

    Args:
        pixel_weight: λ; 0 turns the pixel-space terms off (no VAE decode at all).
        perceptual_weights: VGG19 weights (see :class:`VGGPerceptual`), or ``None`` for L1 only.
        perceptual_depth: VGG19 stages used.
        latent_loss: ``"mse"`` (the paper) or ``"l1"``.
        expression_weight: height of the expression map's bumps (0: the paper's unweighted
            loss); the stages pass each frame's landmarks (see :func:`expression_weight_map`).
        expression_sigma: their radius, as a fraction of the image side.
        chroma_weight: how much the latent term's colour error counts against its brightness
            error (1: plain RGB; see :func:`opponent_colours`); only for latents that are
            pixels (the stages refuse it with a VAE). Away from 1 an ``"l1"`` latent term
            takes its absolute values on the opponent axes, not on R, G and B.
    """

    def __init__(self, pixel_weight: float = 0.1, perceptual_weights: str | None = "imagenet",
                 perceptual_depth: int = 5, latent_loss: Literal["mse", "l1"] = "mse",
                 expression_weight: float = 0.0, expression_sigma: float = 0.04,
                 chroma_weight: float = 1.0) -> None:
        super().__init__()
        if chroma_weight <= 0:
            raise ValueError(f"chroma_weight must be positive, got {chroma_weight}")
        self.chroma_weight = chroma_weight
        self.expression_weight = expression_weight
        self.expression_sigma = expression_sigma
        self.pixel_weight = pixel_weight
        self.latent_loss = latent_loss
        self.perceptual = (
            VGGPerceptual(perceptual_weights, perceptual_depth)
            if pixel_weight and perceptual_weights else None
        )

    @property
    def uses_pixels(self) -> bool:
        """Whether the loss needs the decoded prediction (λ > 0)."""
        return self.pixel_weight > 0

    def expression_maps(self, landmarks: torch.Tensor | None, size: tuple[int, int]
                        ) -> torch.Tensor | None:
        """The expression map (b f 1 h w) of ``landmarks`` (b f 68 2), or ``None`` when off."""
        if not self.expression_weight or landmarks is None:
            return None
        return expression_weight_map(landmarks, size, self.expression_weight,
                                     self.expression_sigma)

    def forward(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        decoded: torch.Tensor | None = None,
        frames: torch.Tensor | None = None,
        time_weight: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        pixel_landmarks: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms and their total.

        Args:
            prediction, target: network output and regression target (b f c h w).
            decoded, frames: VAE decode of the predicted x0 and the ground truth, (b f 3 H W)
                in [-1, 1] (only when :attr:`uses_pixels`).
            time_weight: w(t) per sample (b,).
            landmarks: (b f 68 2) of the predicted frames, for the expression map (optional).
            pixel_landmarks: (b f' 68 2) of the decoded frames (optional).

        Returns:
            ``{"latent", "l1", "perceptual", "total"}`` (pixel terms only when used).
        """
        difference = prediction.float() - target.float()
        squared = self.latent_loss == "mse"
        if self.chroma_weight != 1:  # a squared error's colour parts weigh the scale squared
            scale = self.chroma_weight**0.5 if squared else self.chroma_weight
            difference = opponent_colours(difference, scale)
        error = difference.square() if squared else difference.abs()
        terms = {"latent": _weighted_mean(error, self.expression_maps(landmarks,
                                                                      prediction.shape[-2:]))}
        total = terms["latent"]
        if self.uses_pixels:
            w = time_weight.float().view(-1, 1, 1, 1, 1)
            terms["l1"] = _weighted_mean(w * (decoded.float() - frames.float()).abs(),
                                         self.expression_maps(pixel_landmarks,
                                                              frames.shape[-2:]))
            pixel = terms["l1"]
            if self.perceptual is not None:
                b, f = frames.shape[:2]
                per_image = self.perceptual(decoded.flatten(0, 1).float(),
                                            frames.flatten(0, 1).float())
                terms["perceptual"] = (time_weight.float()[:, None] * per_image.view(b, f)).mean()
                pixel = pixel + terms["perceptual"]
            total = total + self.pixel_weight * pixel
        terms["total"] = total
        return terms
