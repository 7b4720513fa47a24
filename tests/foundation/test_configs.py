"""Every shipped YAML under configs/ parses with the CLI, so no config can rot unnoticed."""

from pathlib import Path

import pytest
import yaml

from moee.cli import MoEECLI

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRAINER_FRAGMENTS = sorted((CONFIGS / "trainer").glob("*.yaml"))
STAGE_CONFIGS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("trainer", "sweeps", "common")
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
    config = parse(path)
    assert config.model.class_path.startswith(
        ("moee.stages.", "moee.inference.", "moee.evaluation."))
    assert config.data.class_path in ("moee.data.datamodule.MoEEDataModule",
                                      "moee.data.speech_emotion.SpeechEmotionDataModule",
                                      "moee.inference.lightning.AnimationJobs")
    scales = config.model.init_args.get("lr_scales")
    if scales:  # the stage checks its groups only when built: check them here
        from moee.stages.base import check_lr_scales

        check_lr_scales(dict(scales))
    if config.model.class_path.endswith("ExpertModule"):
        emotion = config.model.init_args.emotion
        if emotion == "all":  # the six side by side, one file each
            from moee.emotions import BASIC_EMOTIONS

            assert path.stem == "experts" and "{emotion}" in config.model.init_args.export_path
            assert config.data.init_args.clips.emotions == list(BASIC_EMOTIONS)
        else:
            assert path.stem == f"expert_{emotion}"
            assert config.data.init_args.clips.emotions == [emotion]


def test_every_expert_has_a_config_at_both_scales():
    from moee.emotions import BASIC_EMOTIONS

    for folder in (CONFIGS, CONFIGS / "tiny"):
        assert {p.stem for p in folder.glob("expert_*.yaml")} == {
            f"expert_{e}" for e in BASIC_EMOTIONS}


def flat(config) -> dict:
    """A parsed config as {dotted key: value}, without the include bookkeeping."""
    items = config.clone()
    items.pop("config", None)
    return {key: value for key, value in items.items() if "__path__" not in key}


@pytest.mark.parametrize("folder", ["", "tiny"], ids=["paper", "tiny"])
def test_each_expert_config_is_the_shared_one_with_its_own_emotion(folder):
    """expert_<emotion>.yaml includes common/expert.yaml and sets only its emotion, run folder
    and export file; resolved, it is the shared config with those (and the data's emotion)."""
    from moee.emotions import BASIC_EMOTIONS

    root = CONFIGS / folder
    runs = "runs/tiny" if folder else "runs"
    shared = flat(parse(root / "common" / "expert.yaml"))
    for emotion in BASIC_EMOTIONS:
        path = root / f"expert_{emotion}.yaml"
        own = {"trainer.default_root_dir": f"{runs}/expert_{emotion}",
               "model.init_args.emotion": emotion,
               "model.init_args.export_path": f"{runs}/weights/expert_{emotion}.safetensors"}
        assert yaml.safe_load(path.read_text()) == {"config": "common/expert.yaml", **own}
        expected = {**shared, **own, "data.init_args.clips.emotions": [emotion]}
        assert flat(parse(path)) == expected, path.name


def test_paper_scale_training_stages_share_one_trainer():
    """The nine paper-scale training configs include common/trainer.yaml and set only their
    run folder and step count over it."""
    from moee.emotions import BASIC_EMOTIONS

    shared = flat(parse(CONFIGS / "common" / "trainer.yaml",
                        model="lightning.pytorch.demos.boring_classes.BoringModel"))
    shared = {k: v for k, v in shared.items() if k.startswith("trainer.")}
    steps = {"backbone_image": 30000, "backbone": 30000, "gating": 10000,
             **{f"expert_{e}": 10000 for e in BASIC_EMOTIONS}}
    for name, max_steps in steps.items():
        text = (CONFIGS / f"{name}.yaml").read_text()
        assert "\ntrainer:" not in text  # no trainer block of its own
        trainer = {k: v for k, v in flat(parse(CONFIGS / f"{name}.yaml")).items()
                   if k.startswith("trainer.")}
        assert trainer == {**shared, "trainer.default_root_dir": f"runs/{name}",
                           "trainer.max_steps": max_steps}, name


def test_the_configs_ship_with_the_package():
    """moee/configs, the package data pyproject declares, is this configs/ folder."""
    import moee

    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((CONFIGS.parent / "pyproject.toml").read_text())
    assert "configs/**/*" in pyproject["tool"]["setuptools"]["package-data"]["moee"]
    assert (Path(moee.__file__).parent / "configs").resolve() == CONFIGS.resolve()


def test_paper_scale_network_builds_on_meta():
    import torch

    from moee.models.moee_net import MoEENet, MoEENetConfig
    from moee.models.pretrained import WeightSources

    net_config = parse(CONFIGS / "expert_sad.yaml").model.init_args.net.as_dict()
    net_config.pop("__path__", None)
    assert net_config["preset"] == "sd15" and net_config["weights"]["unet"]
    with torch.device("meta"):
        net = MoEENet(MoEENetConfig(**{**net_config, "weights": WeightSources()}))
    assert sum(p.numel() for p in net.denoiser.unet.parameters()) == 859_520_964  # SD-1.5
    assert sum(p.numel() for p in net.parameters()) > 2 * 859_520_964


def test_table5_overlay_names_every_variant_where_the_bench_writes_it():
    """configs/tiny/ablations/common/table5.yaml, on top of the tiny test config, scores the
    four variants from the folders benchmarks/bench_synthemo.py trains them into."""
    table5 = parse(CONFIGS / "tiny" / "test.yaml",
                   CONFIGS / "tiny" / "ablations" / "common" / "table5.yaml")
    assert table5.model.init_args.ablation and table5.model.init_args.table == "table5"
    models = {m["name"]: m for m in table5.model.init_args.models}
    assert list(models) == ["MoEE (full)", "w/o MoE", "w/o global gate", "w/o MNS",
                            "Ground truth"]
    folders = {"MoEE (full)": "full", "w/o MoE": "no_moe", "w/o global gate": "no_global_gate",
               "w/o MNS": "no_mns"}
    for name, folder in folders.items():
        assert models[name]["weights"][-1] == f"runs/table5/{folder}/weights/gating.safetensors"
    assert models["w/o MoE"]["net"]["num_experts"] == 1
    assert models["w/o global gate"]["net"]["global_gate"] is False
    assert models["w/o global gate"]["weights"][:-1] == models["MoEE (full)"]["weights"][:-1]


@pytest.mark.parametrize("name", ["predict.yaml", "test.yaml"])
def test_tiny_sampling_configs_sample_as_the_quickstart(name):
    """configs/tiny/{predict,test}.yaml score and animate what the quickstart measured."""
    from dataclasses import asdict

    from moee.inference.sampling import PRESET_SAMPLING

    sampler = parse(CONFIGS / "tiny" / name).model.init_args.sampler
    preset = asdict(PRESET_SAMPLING["tiny"])
    assert {key: sampler[key] for key in preset} == preset
