"""Stage weights on disk: loading exports and checkpoints, their metadata, and the checks that
say in one line why a file cannot serve (missing, corrupt, another objective, another
architecture, parallel exports that disagree).

A stage export is a safetensors file of MoEENet weights whose metadata records the stage that
wrote it and the diffusion objective it was trained with; a Lightning checkpoint serves too.
Training stages, sampling pipelines, evaluation and the CLI all load weights through here.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from moee.errors import MoEEError
from moee.models.objective import DiffusionObjective
from moee.utils import atomic_path

if TYPE_CHECKING:
    from moee.models.moee_net import MoEENet

log = logging.getLogger(__name__)


class MissingCheckpointError(MoEEError, FileNotFoundError):
    """A previous stage's weights that a config names but that do not exist."""


def load_weights(path: str | Path, hint: str = "") -> dict[str, torch.Tensor]:
    """MoEENet weights from a stage export (``.safetensors``) or a Lightning checkpoint.

    Lightning checkpoints are read with ``weights_only=True``; their ``net.`` prefix is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"checkpoint not found: {str(path)!r}{hint}")
    if path.suffix == ".safetensors":
        return readable(path, load_file)
    checkpoint = readable(path, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    state = checkpoint.get("state_dict", checkpoint)
    return {k.removeprefix("net."): v for k, v in state.items() if not k.startswith("loss.")}


class StageWeightsError(MoEEError, ValueError):
    """Stage weights that exist but cannot serve as given; the message is one line that says
    what to do."""


class CorruptCheckpointError(StageWeightsError):
    """A weights file that is not a complete safetensors export or Lightning checkpoint."""


def readable(path: str | Path, read: Callable[[str], Any]) -> Any:
    """``read(path)``, with a truncated or foreign file as :class:`CorruptCheckpointError`."""
    try:
        return read(str(path))
    except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError) as error:
        raise CorruptCheckpointError(
            f"cannot read {str(path)!r} ({type(error).__name__}): it is not a complete "
            "safetensors export or Lightning checkpoint; export or train it again") from None


class ObjectiveMismatchError(StageWeightsError):
    """Weights trained with another prediction type or noise schedule than the one asked for."""


OBJECTIVE_KEY = "objective"
"""Safetensors metadata key of a stage export's :attr:`DiffusionObjective.schedule` (JSON)."""
EXPERTS_KEY, GLOBAL_GATE_KEY = "num_experts", "global_gate"
"""Safetensors metadata keys of the Emotion MoE layout of the network that wrote an export. Two
ablations' exports load into the full network without a name or shape error: a one-expert
("w/o MoE") export's expert becomes the first (angry), and a gating export without the global
gate leaves that gate untrained; both are checked against the network instead."""


def write_export(weights: dict[str, torch.Tensor], path: str | Path,
                 metadata: dict[str, str]) -> Path:
    """Write a stage export (MoEENet-named weights, ``metadata`` with at least ``stage``)
    atomically: a failed write leaves the previous file as it was."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata=metadata)
    log.info("exported %s", path)
    return path


def export_metadata(path: str | Path) -> dict[str, str]:
    """The metadata a stage export was written with (empty for other files, e.g. a Lightning
    checkpoint)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    return readable(path, lambda p: _metadata(p) or {})


def _metadata(path: str) -> dict[str, str] | None:
    with safe_open(path, "pt") as file:
        return file.metadata()


def recorded_schedule(path: str | Path) -> dict | None:
    """The diffusion schedule a stage export was trained with (``None``: not recorded, e.g. a
    Lightning checkpoint or an older export)."""
    recorded = export_metadata(path).get(OBJECTIVE_KEY)
    return None if recorded is None else json.loads(recorded)


def check_objective(path: str | Path, objective: DiffusionObjective) -> None:
    """Raise :class:`ObjectiveMismatchError` if ``path`` records another objective."""
    schedule = recorded_schedule(path)
    if schedule is not None and schedule != objective.schedule:
        raise ObjectiveMismatchError(
            f"{path} was trained with objective {schedule}, this stage uses "
            f"{objective.schedule}: set model.init_args.objective to match")


def trained_objective(paths: list[str | Path]) -> DiffusionObjective | None:
    """The objective recorded in stage exports, which must agree (``None`` if none records one)."""
    schedules = {json.dumps(s, sort_keys=True) for s in map(recorded_schedule, paths) if s}
    if len(schedules) > 1:
        raise ObjectiveMismatchError(
            f"the weights were trained with different diffusion objectives "
            f"({' vs '.join(sorted(schedules))}); use exports of one training run")
    return DiffusionObjective(**json.loads(schedules.pop())) if schedules else None


class ExportsDisagreeError(StageWeightsError):
    """Exports of parallel stages (the six experts) that hold different values for one weight."""


def check_parallel_exports(paths: list[str | Path]) -> None:
    """Raise :class:`ExportsDisagreeError` if two exports of the same stage class (experts,
    trained side by side from one backbone) hold different values for the same weight: loading
    them in order would silently hand the first ones the last one's weights.

    Only the names are kept; a weight is read (from both files) only when a name repeats.
    """
    first_holder: dict[tuple[str, str], str] = {}  # (stage, weight name) → first export
    for path in map(str, paths):
        stage = export_metadata(path).get("stage")
        if stage is None:
            continue
        with safe_open(path, "pt") as file:
            for key in file.keys():
                earlier = first_holder.setdefault((stage, key), path)
                if earlier == path:
                    continue
                with safe_open(earlier, "pt") as other:
                    if not torch.equal(other.get_tensor(key), file.get_tensor(key)):
                        raise ExportsDisagreeError(
                            f"{earlier} and {path} ({stage}) hold different {key}: parallel "
                            "stages must share it, retrain them from one backbone export")


class ArchitectureMismatchError(StageWeightsError):
    """Weights of another network: names it lacks, or tensors of other shapes (e.g. an export
    of an older preset)."""


def load_net_weights(net: MoEENet, path: str | Path, hint: str = "") -> set[str]:
    """Load (a subset of) MoEENet weights from ``path`` and return their names; every key must
    exist in ``net`` with the same shape, and an export's recorded Emotion MoE layout must fit
    the network's (else one-line :class:`ArchitectureMismatchError`)."""
    metadata = export_metadata(path)
    recorded = metadata.get(EXPERTS_KEY)
    if recorded is not None and int(recorded) != net.config.num_experts:
        raise ArchitectureMismatchError(
            f"{path}: trained with {recorded} expert(s) per Emotion MoE, this network has "
            f"{net.config.num_experts}: build it with num_experts {recorded} "
            "(e.g. --net.num_experts / net.num_experts) or load the matching weights")
    state = load_weights(path, hint=hint)
    if (metadata.get(GLOBAL_GATE_KEY) == "false" and net.config.global_gate
            and any(".local_gate." in key for key in state)):  # trained gates, none global
        raise ArchitectureMismatchError(
            f"{path}: its gates were trained without the global gate, which this network has "
            "and would leave untrained: build it with global_gate false "
            "(e.g. --net.global_gate false / net.global_gate) or load the matching weights")
    own = net.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ArchitectureMismatchError(
            f"{path}: {len(unknown)} tensors are not this network's weights, e.g. {unknown[0]}: "
            "it was trained for another network; retrain it or build the one it was made for")
    reshaped = [key for key in sorted(state) if state[key].shape != own[key].shape]
    if reshaped:
        key = reshaped[0]
        raise ArchitectureMismatchError(
            f"{path}: {len(reshaped)} tensors have other shapes than this network's, e.g. {key} "
            f"{tuple(state[key].shape)} (this network: {tuple(own[key].shape)}): it was "
            "trained with other widths; retrain it or build the preset it was made for")
    net.load_state_dict(state, strict=False)
    log.info("loaded %d tensors from %s", len(state), path)
    return set(state)
