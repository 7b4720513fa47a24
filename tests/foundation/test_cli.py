"""``python -m moee``: the top-level help, Lightning subcommands, configs and overrides."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moee.cli import LIGHTNING_COMMANDS, PROJECT_COMMANDS, main


def moee(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "moee", *args], capture_output=True,
                            text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def in_process(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``moee.cli.main(args)`` run in this process: the help
    texts need no fresh interpreter (~9 s of imports each)."""
    try:
        main(list(args))
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_help_lists_every_command():
    out = moee("--help").stdout  # the real entry point, `python -m moee`
    for name in [*LIGHTNING_COMMANDS, *PROJECT_COMMANDS]:
        assert f"  {name} " in out


def test_unknown_command_fails_with_usage(capsys):
    status, _, err = in_process(capsys, "trian")
    assert status != 0 and "unknown command 'trian'" in err


def test_fit_help(capsys):
    status, out, _ = in_process(capsys, "fit", "--help")
    assert status == 0 and "--trainer.max_epochs" in out


def test_print_config_later_config_and_overrides_win(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("trainer:\n  max_epochs: 1\n  accelerator: cpu\n")
    second.write_text("trainer:\n  max_epochs: 2\n")
    out = moee("fit", "--config", str(first), "--config", str(second),
               "--trainer.log_every_n_steps", "7", "--print_config").stdout
    trainer = yaml.safe_load(out)["trainer"]
    assert trainer["max_epochs"] == 2 and trainer["accelerator"] == "cpu"
    assert trainer["log_every_n_steps"] == 7


@pytest.mark.parametrize("command", sorted(PROJECT_COMMANDS))
def test_project_command_help(command, capsys):
    status, out, _ = in_process(capsys, command, "--help")
    assert status == 0 and "usage" in out.lower()


def test_missing_stage_weights_are_one_clear_line(tmp_path):
    config = str(Path(__file__).resolve().parents[2] / "configs/tiny/expert_sad.yaml")
    run = [sys.executable, "-m", "moee", "fit", "--config", config]
    missing_backbone = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True,
                                      timeout=120)
    assert missing_backbone.returncode == 1
    assert missing_backbone.stderr.strip().splitlines()[-1].startswith(
        "error: checkpoint not found: 'runs/tiny/weights/backbone.safetensors'")
    missing_shards = subprocess.run([*run, "--model.init_args.init_weights", "[]"],
                                    cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert missing_shards.returncode == 1
    assert "error: " in missing_shards.stderr and "runs/synthemo" in missing_shards.stderr
    assert "Traceback" not in missing_shards.stderr


@pytest.fixture
def error_line(capsys, monkeypatch, tmp_path):
    """``error_line(config, command="fit")``: the last stderr line of ``command --config
    configs/tiny/<config>`` run in ``tmp_path``, which must fail with status 1. In this process,
    as :func:`in_process`: ``test_missing_stage_weights_are_one_clear_line`` checks the same
    errors from a fresh interpreter."""
    monkeypatch.chdir(tmp_path)

    def last_line(config: str, command: str = "fit") -> str:
        path = str(Path(__file__).resolve().parents[2] / "configs" / "tiny" / config)
        status, _, err = in_process(capsys, command, "--config", path)
        assert status == 1, err
        return err.strip().splitlines()[-1]

    return last_line


def test_weights_of_another_objective_are_one_clear_line(tmp_path, error_line):
    from moee.models.objective import DiffusionObjective
    from moee.stages import BackboneModule
    from moee.stages.losses import MoEELoss

    export = tmp_path / "runs" / "tiny" / "weights" / "backbone.safetensors"
    BackboneModule(objective=DiffusionObjective("v_prediction"),
                   loss=MoEELoss(perceptual_weights="random")).export(export)
    last = error_line("expert_sad.yaml")
    assert last.startswith("error: runs/tiny/weights/backbone.safetensors was trained with")
    assert "set model.init_args.objective to match" in last


def test_weights_of_another_architecture_are_one_clear_line(tmp_path, error_line):
    """An export of other widths (e.g. an older tiny preset's) or of another network's names
    stops the stage in one line, not torch's list of every size mismatch."""
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "runs" / "tiny" / "weights"
    weights.mkdir(parents=True)
    save_file({"denoiser.unet.conv_out.bias": torch.zeros(7)}, weights / "backbone.safetensors")
    last = error_line("expert_sad.yaml")
    assert last.startswith("error: runs/tiny/weights/backbone.safetensors: 1 tensors have other "
                           "shapes than this network's, e.g. denoiser.unet.conv_out.bias (7,)")
    assert "retrain it" in last
    save_file({"unet.conv_out.bias": torch.zeros(7)}, weights / "backbone.safetensors")
    last = error_line("expert_sad.yaml")
    assert "1 tensors are not this network's weights, e.g. unet.conv_out.bias" in last


def test_gates_trained_without_the_global_gate_are_one_clear_line(tmp_path, error_line):
    """A "w/o global gate" export has the full network's names and shapes, so only its recorded
    layout keeps the full network from loading it with that gate left untrained."""
    from safetensors.torch import save_file

    from moee.models.moee_net import MoEENet, MoEENetConfig
    from moee.models.weights import GLOBAL_GATE_KEY, load_net_weights

    weights = tmp_path / "runs" / "tiny" / "weights"
    weights.mkdir(parents=True)
    gates = {k: v for k, v in MoEENet(MoEENetConfig(global_gate=False)).state_dict().items()
             if ".local_gate." in k}
    save_file(gates, weights / "backbone.safetensors", metadata={GLOBAL_GATE_KEY: "false"})
    last = error_line("expert_sad.yaml")
    assert last.startswith("error: runs/tiny/weights/backbone.safetensors: its gates were "
                           "trained without the global gate")
    assert "global_gate false" in last
    load_net_weights(MoEENet(MoEENetConfig(global_gate=False)), weights / "backbone.safetensors")


def test_experts_that_disagree_are_one_clear_line(tmp_path, error_line):
    """Expert exports that each carry their own Emotion-to-Latents (the old recipe) would hand
    every expert the last one's at load time: the gating stage and ``moee test`` refuse them
    in one line, as they do missing weights."""
    import torch
    from safetensors.torch import save_file

    from moee.emotions import BASIC_EMOTIONS

    missing = error_line("test.yaml", command="test")  # moee test's rows, too
    assert missing.startswith("error: checkpoint not found: 'runs/tiny/weights/backbone.")
    weights = tmp_path / "runs" / "tiny" / "weights"
    weights.mkdir(parents=True)
    for stage in ("backbone", "speech_emotion", "gating"):
        save_file({"x": torch.zeros(1)}, weights / f"{stage}.safetensors")
    for index, emotion in enumerate(BASIC_EMOTIONS):
        save_file({"emotion_to_latents.null_latent": torch.full((2, 3), float(index))},
                  weights / f"expert_{emotion}.safetensors", metadata={"stage": "ExpertModule"})
    for command, config in (("fit", "gating.yaml"), ("test", "test.yaml")):
        last = error_line(config, command=command)
        assert last.startswith("error: runs/tiny/weights/expert_angry.safetensors and ")
        assert "emotion_to_latents.null_latent" in last and "one backbone export" in last


def test_animate_runs_without_lightning():
    """Sampling needs the network and its weights, not the training framework."""
    probe = ("import sys, moee.inference.animate, moee.inference.pipeline; "
             "sys.exit(int(any(name.split('.')[0] == 'lightning' for name in sys.modules)))")
    assert subprocess.run([sys.executable, "-c", probe], timeout=120).returncode == 0
