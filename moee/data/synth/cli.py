"""``python -m moee synth``: generate SynthEmo shards, draw the contact sheet.

    python -m moee synth --out DIR [--size 64 --frames 50 --train 40 --val 8 --test 8 ...]
    python -m moee synth sheet --out docs/synthemo_contact_sheet.png

``python -m moee synth probes`` is :mod:`moee.evaluation.probe_training`.
"""

from __future__ import annotations

import sys

from jsonargparse import CLI


def generate(out: str = "synthemo", seed: int = 0, size: int = 64, frames: int = 50,
             train: int = 40, val: int = 8, test: int = 8, clips_per_identity: int = 11,
             head_motion: float = 1.0, shard_size: int = 32, workers: int = 1,
             progress: bool = True) -> None:
    """Write SynthEmo shards to OUT/{train,val,test}; other commands: synth probes, synth sheet.

    Each split folder gets its shards and a manifest.json; splits have disjoint identities.

    Args:
        out: output folder.
        seed: population and clip seed; the same seed gives identical frames and audio.
        size: frame side in pixels (32..512).
        frames: frames per clip (25 fps).
        train: identities in the train split.
        val: identities in the val split (disjoint from train).
        test: identities in the test split (disjoint from both).
        clips_per_identity: clips per identity; each run of 11 covers every emotion class.
        head_motion: scale of the head's sway and nods (1: lively; 0: a still head).
        shard_size: clips per shard.
        workers: processes (keep to 2 or fewer on shared machines).
        progress: show a progress bar.
    """
    from moee.data.synth.generator import ClipConfig, generate_dataset

    try:  # checked before anything is written
        config = ClipConfig(seed=seed, size=size, num_frames=frames, head_motion=head_motion)
    except ValueError as error:
        sys.exit(f"error: {error}")
    folder = generate_dataset(out, config, (train, val, test), clips_per_identity, shard_size,
                              workers, progress)
    print(f"SynthEmo shards written to {folder}")


def sheet(out: str = "docs/synthemo_contact_sheet.png", identities: int = 8, size: int = 128,
          seed: int = 0) -> None:
    """Render the contact sheet: identities (rows) x the 11 emotion classes (columns).

    Args:
        out: PNG path.
        identities: number of rows.
        size: cell size in pixels.
        seed: population seed.
    """
    from moee.data.synth.sheet import write_contact_sheet

    print(f"contact sheet written to {write_contact_sheet(out, identities, size, seed)}")


_COMMANDS = {"sheet": sheet}


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``synth [sheet] ...``; without a subcommand, generate shards."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _COMMANDS:
        CLI(_COMMANDS[argv[0]], args=argv[1:], prog="moee synth " + argv[0])
    else:
        CLI(generate, args=argv, prog="moee synth")


if __name__ == "__main__":
    main()
