"""Training of the SynthEmo probes: render labelled frames, fit both probes, score them on
unseen identities and write the cache; ``python -m moee synth probes`` (:func:`main`).

The expression probe also learns a face output on :func:`non_faces` made from its renders, so
noise, blur, scrambles and crops read as no face at all.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from jsonargparse import CLI
from torch import nn

from moee.data.batch import from_numpy_frames
from moee.data.synth.face import combine_speech, mouth_opening_from_landmarks
from moee.data.synth.generator import apex_aus, head_motion, renderer
from moee.emotions import EMOTION_CLASSES, NEUTRAL, NUM_ACTION_UNITS
from moee.evaluation.probes import EMBEDDING_DIM, SynthEmoProbes, save_probes

PROBE_IDENTITY_OFFSET = 1_000_000
"""Probe identities are drawn far from the data set's indices (train, then held-out)."""
_NO_LABEL = -100


@dataclass
class ProbeData:
    """Pre-rendered probe frames (uint8 NHWC) and their labels."""

    frames: np.ndarray
    emotion: np.ndarray
    aus: np.ndarray
    landmarks: np.ndarray
    mouth: np.ndarray
    identity: np.ndarray


def render_probe_data(seed: int, identities: range, per_identity: int, size: int,
                      labelled: float = 0.7) -> ProbeData:
    """Render frames of ``identities``: a share ``labelled`` shows an emotion class at apex,
    the rest random sparse AU mixes (emotion label ignored); all with speech, pose and gaze."""
    rng = np.random.default_rng([seed, identities.start, 4242])
    out: dict[str, list] = {k: [] for k in ("frames", "emotion", "aus", "landmarks", "identity")}
    for n, index in enumerate(identities):
        face = renderer(seed, PROBE_IDENTITY_OFFSET + index, size)
        for _ in range(per_identity):
            if rng.uniform() < labelled:
                label = int(rng.integers(len(EMOTION_CLASSES)))
                name = EMOTION_CLASSES[label]
                aus = apex_aus(name, 0.0 if name == NEUTRAL else rng.uniform(0.6, 1.0), rng)
            else:
                label = _NO_LABEL
                aus = (rng.uniform(size=NUM_ACTION_UNITS) < 0.25) * rng.uniform(
                    size=NUM_ACTION_UNITS)
            aus[-1] = rng.uniform(0, 1) if rng.uniform() < 0.1 else 0.0
            viseme = rng.uniform(0, 1, 3) * (rng.uniform(size=3) < [0.6, 0.3, 0.3])
            frame, lmk = face.render(aus, viseme, head_motion(1, rng, energy=1.5)[0],
                                     (rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3)))
            out["frames"].append(frame)
            out["emotion"].append(label)
            out["aus"].append(combine_speech(aus, viseme))
            out["landmarks"].append(lmk)
            out["identity"].append(n)
    landmarks = np.stack(out["landmarks"]).astype(np.float32)
    return ProbeData(
        frames=np.stack(out["frames"]), emotion=np.array(out["emotion"], np.int64),
        aus=np.stack(out["aus"]).astype(np.float32), landmarks=landmarks,
        mouth=mouth_opening_from_landmarks(landmarks).astype(np.float32),
        identity=np.array(out["identity"], np.int64),
    )


def _batches(n: int, batch: int, rng: np.random.Generator):
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            yield order[i:i + batch]


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Light pixel noise, brightness jitter and mild blur, so probes tolerate generated frames."""
    gain = 1 + 0.1 * (torch.rand(x.shape[0], 1, 1, 1) - 0.5)
    x = (x * gain + 0.04 * torch.rand(x.shape[0], 1, 1, 1) * torch.randn_like(x)).clamp(-1, 1)
    blurred = torch.rand(x.shape[0]) < 0.3
    if blurred.any():
        x = x.clone()
        x[blurred] = F.avg_pool2d(x[blurred], 3, 1, 1, count_include_pad=False)
    return x


NEGATIVE_KINDS = ("noise", "smooth noise", "blur", "scramble", "crop", "flat")
"""How :func:`non_faces` turns face renders into frames that are not a face."""


def non_faces(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Negatives for the probe's face output, made from renders x (b 3 h w) in [-1, 1]:
    pixel noise, low-frequency colour noise, heavy blur, 4x4 patch scrambles, off-centre 2x
    crops and flat colour fields, one kind per frame in turn."""
    b, _, h, w = x.shape
    out = torch.empty_like(x)
    rand = functools.partial(torch.rand, generator=generator)
    for i in range(b):
        kind = NEGATIVE_KINDS[i % len(NEGATIVE_KINDS)]
        image = x[i:i + 1]
        if kind == "noise":
            image = (rand(image.shape) * 2 - 1) * rand(1) + (rand(1, 3, 1, 1) - 0.5)
        elif kind == "smooth noise":
            image = F.interpolate(rand(1, 3, 4, 4) * 2 - 1, size=(h, w), mode="bilinear")
        elif kind == "blur":
            image = F.interpolate(F.avg_pool2d(image, 8), size=(h, w), mode="bilinear")
        elif kind == "scramble":
            tiles = rearrange(image, "1 c (i p) (j q) -> (i j) c p q", i=4, j=4)
            tiles = tiles[torch.randperm(16, generator=generator)]
            image = rearrange(tiles, "(i j) c p q -> 1 c (i p) (j q)", i=4)
        elif kind == "crop":
            top, left = (int(v) for v in (rand(2) * torch.tensor([h / 2, w / 2])))
            image = F.interpolate(image[..., top:top + h // 2, left:left + w // 2],
                                  size=(h, w), mode="bilinear")
        else:
            image = (rand(1, 3, 1, 1) * 2 - 1).expand_as(image)
        out[i] = image[0].clamp(-1, 1)
    return out


def _train_loop(model: nn.Module, loss_fn: Callable, n: int, steps: int, batch: int,
                seed: int, lr: float, log: Callable[[str], None], name: str) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    model.train()
    batches = _batches(n, batch, np.random.default_rng(seed))
    start = time.perf_counter()
    for step in range(steps):
        loss = loss_fn(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            log(f"{name} step {step + 1}/{steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - start:.0f}s)")
    model.eval()


@torch.no_grad()
def evaluate_probes(probes: SynthEmoProbes, data: ProbeData) -> dict[str, float]:
    """Held-out scores: emotion accuracy (apex frames), AU MAE, landmark error (fraction of
    image size), mouth-opening MAE, identity nearest-neighbour accuracy, and the face output's
    accuracy on the renders and on :func:`non_faces` made from them."""
    x = from_numpy_frames(data.frames)
    out = {k: [] for k in ("emotion", "aus", "landmarks", "mouth", "face")}
    embeds, negatives = [], []
    generator = torch.Generator().manual_seed(0)
    for i in range(0, len(x), 256):
        pred = probes.expression(x[i:i + 256])
        for k in out:
            out[k].append(pred[k])
        embeds.append(probes.identity(x[i:i + 256]))
        negatives.append(probes.expression(non_faces(x[i:i + 256], generator))["face"])
    pred = {k: torch.cat(v).numpy() for k, v in out.items()}
    labelled = data.emotion != _NO_LABEL
    emb = torch.cat(embeds)
    sim = emb @ emb.T
    sim.fill_diagonal_(-2)
    nearest = sim.argmax(1).numpy()
    return {
        "emotion_accuracy": float((pred["emotion"].argmax(1) == data.emotion)[labelled].mean()),
        "au_mae": float(np.abs(pred["aus"] - data.aus).mean()),
        "landmark_error": float(np.linalg.norm(pred["landmarks"] - data.landmarks, axis=-1).mean()),
        "mouth_mae": float(np.abs(pred["mouth"] - data.mouth).mean()),
        "identity_nn_accuracy": float((data.identity[nearest] == data.identity).mean()),
        "face_accuracy": float((pred["face"] > 0).mean()),
        "non_face_accuracy": float((torch.cat(negatives) < 0).float().mean()),
    }


def train_probes(size: int = 64, seed: int = 0, train_identities: int = 300,
                 frames_per_identity: int = 32, heldout_identities: int = 40,
                 expression_steps: int = 1800, identity_steps: int = 300, batch: int = 64,
                 cache_dir: str | os.PathLike | None = None, threads: int = 1,
                 log: Callable[[str], None] = print) -> tuple[Path, dict[str, float]]:
    """Render probe data, train both probes, evaluate on unseen identities, save the cache.

    Returns the cache path and the held-out metrics (also stored in the file's metadata).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    begin = time.perf_counter()
    train = render_probe_data(seed, range(train_identities), frames_per_identity, size)
    held = render_probe_data(seed, range(train_identities, train_identities + heldout_identities),
                             20, size)
    log(f"rendered {len(train.frames)} train + {len(held.frames)} held-out frames "
        f"({time.perf_counter() - begin:.0f}s)")
    x = from_numpy_frames(train.frames)
    labels = {k: torch.from_numpy(getattr(train, k)) for k in
              ("emotion", "aus", "landmarks", "mouth", "identity")}
    probes = SynthEmoProbes(size)

    def expression_loss(idx) -> torch.Tensor:
        faces = _augment(x[idx])
        pred = probes.expression(torch.cat([faces, non_faces(faces[: len(idx) // 4])]))
        is_face = torch.arange(len(pred["face"])) < len(idx)
        face = {k: v[is_face] for k, v in pred.items()}
        return (F.cross_entropy(face["emotion"], labels["emotion"][idx], ignore_index=_NO_LABEL)
                + 5 * F.binary_cross_entropy_with_logits(face["au_logits"], labels["aus"][idx])
                + 30 * F.smooth_l1_loss(face["landmarks"], labels["landmarks"][idx], beta=0.01)
                + F.l1_loss(face["mouth"], labels["mouth"][idx])
                + F.binary_cross_entropy_with_logits(pred["face"], is_face.float()))

    classifier = nn.Linear(EMBEDDING_DIM, train_identities, bias=False)
    probes.identity.add_module("_train_head", classifier)

    def identity_loss(idx) -> torch.Tensor:
        emb = probes.identity(_augment(x[idx]))
        logits = 16 * emb @ F.normalize(classifier.weight, dim=-1).T
        return F.cross_entropy(logits, labels["identity"][idx], label_smoothing=0.1)

    _train_loop(probes.expression, expression_loss, len(x), expression_steps, batch, seed, 3e-3,
                log, "expression")
    _train_loop(probes.identity, identity_loss, len(x), identity_steps, batch, seed + 1, 3e-3,
                log, "identity")
    del probes.identity._train_head
    metrics = evaluate_probes(probes, held)
    metrics["train_seconds"] = time.perf_counter() - begin
    path = save_probes(probes, metrics, cache_dir)
    log("held-out (unseen identities): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return path, metrics


def probes_command(size: int = 64, seed: int = 0, cache_dir: str | None = None,
                   threads: int = 1, train_identities: int = 300,
                   frames_per_identity: int = 32, expression_steps: int = 1800,
                   identity_steps: int = 300) -> None:
    """Train the SynthEmo probe networks and cache them; prints held-out accuracy.

    Args:
        size: frame size the probes read (frames of other sizes are resized).
        seed: seed of the probe identities and training.
        cache_dir: cache folder (default $MOEE_CACHE or ~/.cache/moee).
        threads: torch CPU threads (1 is fastest on a busy shared machine).
        train_identities: identities rendered for training.
        frames_per_identity: frames rendered per training identity.
        expression_steps: optimiser steps of the expression probe.
        identity_steps: optimiser steps of the identity probe.
    """
    path, _ = train_probes(size=size, seed=seed, train_identities=train_identities,
                           frames_per_identity=frames_per_identity,
                           expression_steps=expression_steps, identity_steps=identity_steps,
                           cache_dir=cache_dir, threads=threads)
    print(f"probes saved to {path}")


def main(argv: list[str] | None = None) -> None:
    """``python -m moee synth probes [--size 64 ...]``."""
    CLI(probes_command, args=argv, prog="moee synth probes")
