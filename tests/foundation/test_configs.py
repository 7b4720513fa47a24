"""Every shipped YAML under configs/ parses with the CLI, so no config can rot unnoticed."""

from pathlib import Path

import pytest
import yaml

from moee.cli import MoEECLI

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRAINER_FRAGMENTS = sorted((CONFIGS / "trainer").glob("*.yaml"))
STAGE_CONFIGS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("trainer", "sweeps")
)


class ParseOnlyCLI(MoEECLI):
    """Parses and validates a config against every class signature, builds nothing."""

    def instantiate_classes(self) -> None:
        pass


def parse(*configs: Path, model: str | None = None):
    args = ["--model", model] if model else []
    for config in configs:
        args += ["--config", str(config)]
    return ParseOnlyCLI(args=args, run=False).config


def test_configs_exist():
    assert TRAINER_FRAGMENTS, "configs/trainer/ should hold the strategy fragments"


@pytest.mark.parametrize("fragment", TRAINER_FRAGMENTS, ids=lambda p: p.name)
def test_trainer_fragment_parses(fragment):
    config = parse(fragment, model="lightning.pytorch.demos.boring_classes.BoringModel")
    for key, value in yaml.safe_load(fragment.read_text())["trainer"].items():
        if not isinstance(value, dict):
            assert config.trainer[key] == value


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_stage_config_parses(path):
    assert parse(path).model is not None
