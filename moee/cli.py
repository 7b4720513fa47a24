"""``python -m moee``: the Lightning subcommands and the project's own tools.

The four Lightning subcommands are a :class:`MoEECLI` (a ``LightningCLI``): each takes
``--config FILE`` (repeatable, later files win), dotted overrides such as
``--model.init_args.lr 1e-5`` and ``--print_config``; the stage, the data module and every
swappable part are chosen by ``class_path``/``init_args``. The project's own tools (synthetic
data, data preparation, sweeps, animation) are subcommands beside them, each a module with a
``main(argv)`` that parses its own arguments with jsonargparse.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from lightning.pytorch.cli import LightningCLI

from moee.errors import MoEEError, user_error_within

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a stage: backbone, one emotion expert, or the gates (--config configs/...)",
    "validate": "run a stage's validation loop on a checkpoint",
    "test": "generate the test split and score it: FID, FVD, LPIPS, AKD, AED, Sync-C/D",
    "predict": "animate a list of jobs (portrait, audio, emotion) into mp4 videos",
}

PROJECT_COMMANDS: dict[str, tuple[str, str]] = {}
"""Project subcommands: name -> (module with ``main(argv)``, one-line description)."""


def register_command(name: str, module: str, description: str) -> None:
    """Add a project subcommand served by ``module.main(argv)``; a two-word name such as
    ``synth probes`` is served before the first word's own command."""
    PROJECT_COMMANDS[name] = (module, description)




register_command("quickstart", "moee.quickstart",
                 "SynthEmo -> train every tiny stage -> animate test portraits (CPU, no downloads)")
register_command("animate", "moee.inference.animate",
                 "animate one portrait with speech and an emotion into an mp4")
register_command("prepare", "moee.data.prepare",
                 "turn folders of real talking videos (MEAD, HDTF, ...) into shards")
register_command("synth", "moee.data.synth.cli",
                 "generate SynthEmo shards; 'synth sheet' draws the contact sheet")
register_command("synth probes", "moee.evaluation.probe_training",
                 "train the SynthEmo probe networks (the metrics' stand-ins) and cache them")
register_command("sweep", "moee.launch.sweep",
                 "run a grid of fit jobs on SLURM (job array) or locally; 'sweep status|collect'")
register_command("data", "moee.data.health",
                 "'data verify DIR': check shard folders against their manifest (sha256, sizes)")
register_command("demo", "moee.demo.cli",
                 "a web page (Gradio) that animates a portrait in every emotion form")


class MoEECLI(LightningCLI):
    """The LightningCLI of MoEE: any stage LightningModule and any LightningDataModule."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(*args, **kwargs)

    def _subcommand_config(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--allow_skips", type=bool, default=False,
                            help="exit 0 even when jobs, test clips or damaged data were skipped")

    def instantiate_trainer(self, **kwargs):
        """The trainer, writing local checkpoints atomically (:mod:`moee.launch.checkpoints`)."""
        from moee.launch.checkpoints import use_atomic_checkpoints

        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        return trainer

    def _exit_if_skipped(self) -> None:
        """Exit 1 when the run skipped jobs, test clips or damaged data (the run's own report
        line says what), unless ``--allow_skips``."""
        from moee.reports import exit_line

        jobs = getattr(self.model, "skipped", 0)
        data = getattr(self.datamodule, "skipped", 0)
        if (jobs or data) and not self._subcommand_config().get("allow_skips"):
            what = {"test": "test clips"}.get(self.subcommand, "jobs") if jobs \
                else "damaged shard reads and samples"
            sys.exit(exit_line(jobs or data, what))

    after_fit = after_validate = after_test = after_predict = _exit_if_skipped

    def instantiate_classes(self) -> None:
        """Build the classes, after checking local weight paths (one clear line, not a
        jsonargparse instantiation error)."""
        model = self._subcommand_config().get("model")
        if model:
            check_weight_paths(model.get("init_args") or {})
        try:
            super().instantiate_classes()
        except Exception as error:  # jsonargparse wraps what a class raises while it is built
            cause = user_error_within(error)
            if cause is None:
                raise
            sys.exit(f"error: {cause}")

    def before_instantiate_classes(self) -> None:
        """An expert stage trains on its own emotion's clips unless the data config says else."""
        config = self._subcommand_config()
        model, data = config.get("model"), config.get("data")
        if (model and data and str(model.get("class_path", "")).endswith("ExpertModule")
                and "clips.emotions" in data.get("init_args", {})
                and data.init_args.clips.emotions is None):
            data.init_args.clips.emotions = [model.init_args.emotion]


def _is_hub_id(source: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None and not os.path.exists(source)


def check_weight_paths(init_args) -> None:
    """Exit with one line when a stage's ``init_weights``, the weights of a ``moee test`` row
    or a local ``net.weights`` folder are missing (hub ids are left to ``from_pretrained``),
    or when they cannot serve (:class:`~moee.models.weights.StageWeightsError`: corrupt, trained
    with another diffusion objective than the stage's, experts that disagree)."""
    from moee.models.objective import DiffusionObjective
    from moee.models.weights import (
        StageWeightsError,
        check_objective,
        check_parallel_exports,
        trained_objective,
    )

    objective = init_args.get("objective")
    objective = DiffusionObjective(**dict(objective.get("init_args") or {})) if objective \
        else DiffusionObjective()
    init_weights = list(init_args.get("init_weights") or [])
    rows = [list(entry.get("weights") or []) for entry in init_args.get("models") or []]
    for path in [*init_weights, *(path for row in rows for path in row)]:
        if not os.path.isfile(path):
            sys.exit(f"error: checkpoint not found: {path!r}: train the stage that exports it "
                     "first (its config's export_path) or fix the weights paths of the config "
                     "(model.init_args.init_weights, or a models row's weights)")
    try:
        for path in init_weights:
            check_objective(path, objective)
        for weights in (init_weights, *rows):
            check_parallel_exports(weights)
        for row in rows:
            trained_objective(row)
    except StageWeightsError as error:
        sys.exit(f"error: {error}")
    net = init_args.get("net")
    weights = (net.get("weights") if net else None) or {}
    for part, source in dict(weights).items():
        if source not in (None, "None", "null", "") and not _is_hub_id(str(source)) \
                and not os.path.exists(source):
            sys.exit(f"error: no {part} weights at {str(source)!r}; download them or set "
                     f"model.init_args.net.weights.{part}")


def usage() -> str:
    """The top-level help: every subcommand with one line each."""
    width = max(map(len, [*LIGHTNING_COMMANDS, *PROJECT_COMMANDS]))
    lines = [
        "usage: python -m moee <command> [options]   (python -m moee <command> --help)",
        "",
        "Lightning commands (--config FILE repeatable, dotted overrides, --print_config):",
        *(f"  {name:<{width}}  {text}" for name, text in LIGHTNING_COMMANDS.items()),
        "",
        "Project commands:",
        *(f"  {name:<{width}}  {text}" for name, (_, text) in PROJECT_COMMANDS.items()),
        "",
        "Example: python -m moee fit --config configs/tiny/expert_sad.yaml",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m moee`` and the ``moee`` script."""
    from_command_line = argv is None
    argv = sys.argv[1:] if from_command_line else list(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    words = 2 if " ".join(argv[:2]) in PROJECT_COMMANDS else 1
    command = " ".join(argv[:words])
    if command in PROJECT_COMMANDS:
        module, _ = PROJECT_COMMANDS[command]
        importlib.import_module(module).main(argv[words:])
        return
    if command not in LIGHTNING_COMMANDS:
        sys.exit(f"moee: unknown command {command!r}\n\n{usage()}")
    try:
        MoEECLI(args=None if from_command_line else argv)
    except MoEEError as error:
        sys.exit(f"error: {error}")
