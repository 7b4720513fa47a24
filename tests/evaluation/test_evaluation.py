"""``moee test`` end to end, the evaluation callback, the results tables, the ablation switches.

Everything runs on a tiny random network, random SynthEmo probes saved to a temporary cache
and tiny SynthEmo shards made in a temporary folder.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from moee.cli import main as moee_main
from moee.data.batch import normalize_images
from moee.data.datamodule import MoEEDataModule
from moee.data.sampling import SamplingOptions
from moee.data.shards import read_manifest, shard_urls
from moee.data.synth.generator import ClipConfig, generate_dataset
from moee.emotions import EMOTION_CLASSES
from moee.errors import BadInputError, MoEEError
from moee.evaluation.callbacks import EvaluationCallback
from moee.evaluation.generation import clip_condition, clip_emotion
from moee.evaluation.lightning import EvaluationModule, ModelEntry
from moee.evaluation.probes import SynthEmoProbes, load_probes, save_probes
from moee.evaluation.synthemo import SynthEmoMetrics
from moee.inference.sampling import SamplerSettings
from moee.metrics.tables import COLUMNS, markdown_table, wins_of
from moee.models.emotion_moe import EmotionMoE, UniformGate
from moee.models.moee_net import MoEENet, MoEENetConfig, parameter_groups
from moee.models.pretrained import WeightSources
from moee.stages import BackboneModule
from moee.stages.losses import MoEELoss
from tests.data.damage import truncate_in_second_sample
from tests.models.conftest import wake_zero_inits

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST_SAMPLER = {"sampler": "ddim", "steps": 1, "audio_guidance": 1.0, "emotion_guidance": 1.0,
                "clip_frames": 4, "seed": 0}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny SynthEmo shards, random probes in a cache folder, random network weights."""
    root = tmp_path_factory.mktemp("evaluation")
    generate_dataset(root / "synthemo", ClipConfig(seed=5, size=64, num_frames=12), (1, 1, 1),
                     clips_per_identity=4, progress=False)
    torch.manual_seed(0)
    probes = SynthEmoProbes(size=64).eval()
    save_probes(probes, {}, root / "cache")
    net = MoEENet()
    wake_zero_inits(net)
    save_file({k: v.clone() for k, v in net.state_dict().items()}, root / "net.safetensors")
    return root


def run_test_command(workspace: Path, out: Path, test: Path | None = None,
                     models: list[dict] | None = None) -> dict:
    """``moee test`` with the shipped tiny config and small overrides (of the ``test`` shards
    and the ``models`` rows); returns the JSON table."""
    models = models or [{"name": "random", "weights": [str(workspace / "net.safetensors")]},
                        {"name": "Ground truth", "source": "ground_truth"},
                        {"name": "Still reference", "source": "reference"}]
    overrides = {
        "trainer": {"default_root_dir": str(out), "limit_test_batches": None},
        "model": {"init_args": {
            "net": {"preset": "tiny", "weights": {"vae": None}}, "models": models,
            "sampler": FAST_SAMPLER, "output_dir": str(out / "eval"),
            "metrics": {"class_path": "moee.evaluation.synthemo.SynthEmoMetrics",
                        "init_args": {"probe_cache": str(workspace / "cache"), "fvd_frames": 4,
                                      "sync_max_offset": 2}}}},
        "data": {"init_args": {"test": str(test or workspace / "synthemo" / "test"),
                               "sampling": {"num_frames": 8},
                               "num_workers": 0, "val_batch_size": 2}},
    }
    extra = out / "overrides.yaml"
    extra.write_text(yaml.safe_dump(overrides))
    moee_main(["test", "--config", str(CONFIGS / "tiny" / "test.yaml"), "--config", str(extra)])
    return json.loads((out / "eval" / "synthemo.json").read_text())


def test_damaged_test_shards_are_skipped_clips_in_the_report(workspace, tmp_path, capsys):
    test = tmp_path / "test"
    shutil.copytree(workspace / "synthemo" / "test", test)
    url = shard_urls(test)[0]
    truncate_in_second_sample(url)
    samples = read_manifest(test)["samples"]
    lost = read_manifest(test)["shards"][0]["samples"] - 1
    with pytest.raises(SystemExit) as info:
        run_test_command(workspace, tmp_path, test, [{"name": "Ground truth",
                                                      "source": "ground_truth"}])
    assert info.value.code == (f"error: {lost} test clips skipped (see the line above); exit "
                               "status 1 (--allow_skips accepts skips)")
    report = tmp_path / "eval" / "synthemo_skipped.csv"
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"{samples - lost} of {samples} test clips scored, {lost} skipped "
                    f"(reasons: {report})")
    (row,) = csv.DictReader(report.open())
    assert row["shard"] == url and row["count"] == str(lost)
    assert row["reason"] == f"unexpected end of data (after 1 of {lost + 1} samples)"
    table = json.loads((tmp_path / "eval" / "synthemo.json").read_text())
    assert table["clips"] == samples - lost  # the table is of the clips that were read


def probe_accuracy(workspace: Path) -> float:
    """The cached probe's emotion accuracy on the real test windows (clip-averaged softmax)."""
    probes = load_probes(64, workspace / "cache")
    data = MoEEDataModule(test=str(workspace / "synthemo" / "test"), num_workers=0,
                          sampling=SamplingOptions(num_frames=8))
    hits = []
    for batch in data.test_dataloader():
        batch = normalize_images(batch)
        frames = batch["frames"].flatten(0, 1)
        probabilities = probes.emotion_logits(frames).softmax(-1).unflatten(0, (-1, 8)).mean(1)
        wanted = [EMOTION_CLASSES.index(name) for name in batch["emotion_name"]]
        hits += (probabilities.argmax(-1) == torch.tensor(wanted)).tolist()
    return sum(hits) / len(hits)


def test_moee_test_writes_the_three_tables_with_sane_values(workspace, tmp_path):
    table = run_test_command(workspace, tmp_path)
    rows = {row["model"]: row for row in table["rows"]}
    assert list(rows) == ["random", "Ground truth", "Still reference"]
    assert table["clips"] == 4 and table["reference_rows"] == ["Ground truth", "Still reference"]
    for row in rows.values():
        assert set(COLUMNS) <= set(row)
    truth = rows["Ground truth"]
    for column in ("FID", "FVD", "LPIPS", "AKD", "AED"):
        assert abs(truth[column]) < 1e-3, column
    assert truth["ID-Sim"] > 0.99
    assert truth["Emotion-Acc"] == pytest.approx(probe_accuracy(workspace))
    assert rows["Still reference"]["ID-Sim"] == pytest.approx(1.0, abs=1e-4)
    assert rows["random"]["FID"] > truth["FID"]
    markdown = (tmp_path / "eval" / "synthemo.md").read_text()
    assert all(column in markdown for column in COLUMNS)
    header = (tmp_path / "eval" / "synthemo.csv").read_text().splitlines()[0].split(",")
    assert header[: len(COLUMNS) + 1] == ["model", *COLUMNS]


def test_callback_logs_metrics_and_a_video_to_tensorboard(workspace, tmp_path):
    data = MoEEDataModule(train=str(workspace / "synthemo" / "train"),
                          val=str(workspace / "synthemo" / "val"), batch_size=2, num_workers=0,
                          sampling=SamplingOptions(num_frames=8), samples_per_epoch=2)
    callback = EvaluationCallback(
        SynthEmoMetrics(probe_cache=str(workspace / "cache"), fvd_frames=4, sync_max_offset=2),
        every_n_steps=1, every_n_epochs=None, num_videos=1,
        sampler=SamplerSettings(**FAST_SAMPLER))
    stage = BackboneModule(net=MoEENetConfig(), loss=MoEELoss(perceptual_weights=None))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", limit_val_batches=0, callbacks=[callback],
                        default_root_dir=tmp_path, enable_checkpointing=False,
                        enable_progress_bar=False, log_every_n_steps=1)
    trainer.fit(stage, datamodule=data)
    assert stage.net.training  # the callback puts the network back in training mode
    events = EventAccumulator(str(Path(trainer.logger.log_dir)),
                              size_guidance={"images": 0, "audio": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {f"eval/{column}" for column in COLUMNS} <= set(tags["scalars"])
    assert tags["images"] == ["eval/video_0"] and tags["audio"] == ["eval/audio_0"]
    video = events.Images("eval/video_0")[0]
    assert (video.width, video.height) == (128, 64)  # ground truth | generated
    with Image.open(io.BytesIO(video.encoded_image_string)) as gif:
        assert gif.n_frames == 8
    assert "eval/Emotion-Acc" in trainer.progress_bar_metrics


def test_rows_may_animate_each_clip_under_its_text_or_its_speech(workspace, tmp_path):
    """A row's ``conditioning`` changes what its clips are animated under, and only its row."""
    weights = [str(workspace / "net.safetensors")]
    table = run_test_command(workspace, tmp_path, models=[
        {"name": name, "weights": weights, "conditioning": name}
        for name in ("label", "text", "speech")] + [
        {"name": "label again", "weights": weights}])
    rows = {row["model"]: row for row in table["rows"]}
    assert rows["label again"] == {**rows["label"], "model": "label again"}
    for other in ("text", "speech"):
        assert rows[other]["FID"] != pytest.approx(rows["label"]["FID"], rel=1e-4), other


def test_a_model_row_over_a_reference_row_of_an_earlier_config_is_refused(workspace, tmp_path,
                                                                          capsys):
    """Three rows over the tiny test config's three merge item by item: the second, a model
    row without ``source``, would take ``ground_truth`` and score the real frames."""
    weights = [str(workspace / "net.safetensors")]
    with pytest.raises(SystemExit) as info:
        run_test_command(workspace, tmp_path, models=[{"name": "a", "weights": weights},
                                                      {"name": "b", "weights": weights},
                                                      {"name": "c", "weights": weights}])
    error = str(info.value.code) + capsys.readouterr().err
    assert "row 'b' has weights but source 'ground_truth'" in error
    assert "give it source: model" in error
    for row in ({"name": "a", "source": "model"}, {"name": "b", "weights": weights,
                                                   "source": "reference"}):
        with pytest.raises(MoEEError, match="row .* (has no weights|has weights but source)"):
            ModelEntry(**row)


def test_clip_emotion_is_the_label_the_description_or_the_speech():
    batch = {"key": ["a/sad", "b/sad"], "emotion_name": ["sad", "sad"],
             "intensity": torch.tensor([0.5, 0.5]),
             "emotion": SimpleNamespace(text=["a face heavy with sorrow", None])}
    label = clip_emotion(batch, 0)
    assert (label.kind, label.name, label.intensity) == ("basic", "sad", pytest.approx(0.5))
    text = clip_emotion(batch, 0, "text")
    assert (text.kind, text.text) == ("text", "a face heavy with sorrow")
    assert clip_emotion(batch, 1, "speech").kind == "speech"
    with pytest.raises(BadInputError, match="'b/sad' has no text description"):
        clip_emotion(batch, 1, "text")


def test_clip_condition_keeps_label_and_intensity():
    assert clip_condition("happily surprised", 0.7).kind == "compound"
    assert clip_condition("sad", 0.5).intensity == pytest.approx(0.5)
    assert clip_condition("neutral", 0.0).kind == "neutral"


def test_tables_mark_the_best_ranked_row():
    results = {"a": {"FID": 3.0, "Sync-C": 1.0, "AED": 0.5},
               "b": {"FID": 2.0, "Sync-C": 0.5, "AED": 0.5},
               "truth": {"FID": -1e-9, "Sync-C": 2.0, "AED": 0.0}}
    table = markdown_table(results, "T", exclude=["truth"])
    assert "| a | 3.00 | 0.500 | **1.000** |" in table  # a tie everywhere is no win
    assert "| b | **2.00** | 0.500 | 0.500 |" in table
    assert "| truth *(reference)* | 0.00 | 0.000 | 2.000 |" in table
    assert wins_of(results, "a", exclude=["truth"]) == {"FID": False, "Sync-C": True}


def emotion_modules(net: MoEENet) -> list[EmotionMoE]:
    return [m for m in net.modules() if isinstance(m, EmotionMoE)]


def test_default_network_keeps_six_gated_experts():
    torch.manual_seed(0)
    default = MoEENet()
    torch.manual_seed(0)
    explicit = MoEENet(MoEENetConfig(num_experts=6, global_gate=True))
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    for moe in emotion_modules(default):
        assert len(moe.experts) == 6
        assert isinstance(moe.local_gate, torch.nn.Linear)
        assert isinstance(moe.global_gate, torch.nn.Linear)


def test_without_moe_is_one_cross_attention_that_ignores_routing():
    net = MoEENet(MoEENetConfig(num_experts=1))
    groups = parameter_groups(net)
    assert groups["expert_0"] and not groups["gates"]
    assert not any(groups[f"expert_{i}"] for i in range(1, 6))
    moe = emotion_modules(net)[0]
    assert len(moe.experts) == 1 and moe.local_gate is None and moe.global_gate is None
    torch.nn.init.normal_(moe.experts[0].to_out.weight)
    x, context = torch.randn(2, 5, moe.sizes["dim"]), torch.randn(2, 3, moe.sizes["context_dim"])
    expected = x + moe.experts[0](x, context)
    torch.testing.assert_close(moe(x, context), expected)
    torch.testing.assert_close(moe(x, context, expert=4), expected)
    torch.testing.assert_close(moe(x, context, weights=torch.eye(6)[:2]), expected)
    with pytest.raises(ValueError, match="num_experts"):
        MoEENetConfig(num_experts=3)


def test_without_global_gate_mixes_experts_equally():
    net = MoEENet(MoEENetConfig(global_gate=False))
    assert not any(".global_gate." in name for name in net.state_dict())
    assert all(isinstance(m.global_gate, UniformGate) for m in emotion_modules(net))
    torch.manual_seed(0)
    full = EmotionMoE(16, 12, heads=2, zero_init_output=False)
    local_only = full.ablated(6, global_gate=False)
    local_only.load_state_dict(full.state_dict(), strict=False)
    x, context = torch.randn(3, 10, 16), torch.randn(3, 5, 12)
    uniform = torch.full((3, 6), 1 / 6)
    torch.testing.assert_close(local_only(x, context), full(x, context, weights=uniform))
    torch.testing.assert_close(local_only.gates(x, context)[1], uniform)


def test_a_row_may_sample_with_its_own_settings(workspace):
    """Rows of one table can differ only in sampler settings (step-count curves)."""
    weights = [str(workspace / "net.safetensors")]
    module = EvaluationModule(
        models=[ModelEntry("3 steps", weights, sampler=SamplerSettings(steps=3)),
                ModelEntry("default", weights)],
        metrics=SynthEmoMetrics(probe_cache=str(workspace / "cache")),
        net=MoEENetConfig(preset="tiny", weights=WeightSources(vae=None)),
        sampler=SamplerSettings(steps=7))
    assert module.pipelines["3 steps"].settings.steps == 3
    assert module.pipelines["default"].settings.steps == 7
