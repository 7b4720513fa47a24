"""State merging and DDP sync: the metrics of split data equal the metrics of all of it."""

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moee.metrics import (
    AUError,
    AverageEmotionDistance,
    AverageKeypointDistance,
    EmotionAccuracy,
    FrechetInceptionDistance,
    FrechetVideoDistance,
    IdentitySimilarity,
    LipSync,
    RandomConvFeatures,
    RandomConvVideoFeatures,
)

WORLD_SIZE = 2


def make_metrics() -> dict:
    """Metric name → (metric, the batch keys its update reads)."""
    return {
        "FID": FrechetInceptionDistance(RandomConvFeatures(num_features=8, seed=1)),
        "FVD": FrechetVideoDistance(RandomConvVideoFeatures(frame_features=4), num_frames=4),
        "AKD": AverageKeypointDistance(image_size=64),
        "AED": AverageEmotionDistance(norm="l2"),
        "Sync": LipSync(
            lambda windows: windows.mean((-3, -2, -1)),
            lambda audio: audio.unflatten(-1, (5, -1)).abs().mean(-1),
            max_offset=2,
        ),
        "Emotion-Acc": EmotionAccuracy(["a", "b", "c"]),
        "AU-MAE": AUError(),
        "ID-Sim": IdentitySimilarity(),
    }


def make_data() -> dict[str, torch.Tensor]:
    """12 samples of every input the metrics above read (without extractors: raw quantities)."""
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    return {
        "clips": rand(12, 8, 3, 16, 16),
        "target_clips": rand(12, 8, 3, 16, 16),
        "landmarks": rand(12, 8, 5, 2),
        "target_landmarks": rand(12, 8, 5, 2),
        "audio": rand(12, 8 * 640) - 0.5,
        "logits": rand(12, 8, 3),
        "requested_emotion": torch.randint(0, 3, (12,), generator=generator),
        "coefficients": rand(12, 8, 3),
        "requested_au": rand(12, 3),
        "embeddings": rand(12, 8, 6),
        "reference_embedding": rand(12, 6),
    }


UPDATE_INPUTS = {
    "FID": ("clips", "target_clips"),
    "FVD": ("clips", "target_clips"),
    "AKD": ("landmarks", "target_landmarks"),
    "AED": ("coefficients", "logits"),
    "Sync": ("clips", "audio"),
    "Emotion-Acc": ("logits", "requested_emotion"),
    "AU-MAE": ("coefficients", "requested_au"),
    "ID-Sim": ("embeddings", "reference_embedding"),
}


def update_all(metrics: dict, data: dict[str, torch.Tensor], part: slice) -> None:
    for name, metric in metrics.items():
        metric.update(*(data[key][part] for key in UPDATE_INPUTS[name]))


def computed(metric) -> dict[str, float]:
    value = metric.compute()
    return (
        {key: float(v) for key, v in value.items()}
        if isinstance(value, dict)
        else {"": float(value)}
    )


def test_merged_halves_equal_whole():
    data = make_data()
    whole, first, second = make_metrics(), make_metrics(), make_metrics()
    update_all(whole, data, slice(None))
    update_all(first, data, slice(0, 5))
    update_all(second, data, slice(5, None))
    for name, metric in first.items():
        metric.merge_state(second[name])
        assert computed(metric) == pytest.approx(computed(whole[name]), rel=1e-6), name


def ddp_worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: update on its uneven share of the data, compute (which syncs), save."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        metrics = make_metrics()
        update_all(metrics, make_data(), slice(0, 5) if rank == 0 else slice(5, None))
        results = {name: computed(metric) for name, metric in metrics.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two fresh interpreters import torch + torchmetrics: 10 s idle, 35 s loaded
def test_ddp_synced_metrics_equal_single_process(tmp_path):
    """Two gloo ranks with uneven shares sync (sum-reduce) to the single-process values."""
    metrics = make_metrics()
    update_all(metrics, make_data(), slice(None))
    expected = {name: computed(metric) for name, metric in metrics.items()}
    mp.spawn(ddp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    for rank in range(WORLD_SIZE):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name, values in expected.items():
            assert results[name] == pytest.approx(values, rel=1e-6), (rank, name)
