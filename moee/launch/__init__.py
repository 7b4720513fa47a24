"""Distributed training and cluster launching: FSDP2 sharding, preemption-safe checkpoints,
SLURM / local sweeps (submitit)."""
