"""The quickstart's bookkeeping: its stages, the held-out videos it plans, how it scores them."""

import json

import numpy as np
import pytest
import yaml

from moee.emotions import BASIC_EMOTIONS, COMPOUND_EMOTIONS, NEUTRAL, parse_emotion
from moee.quickstart import STAGES
from moee.showcase import KINDS, Person, plan_videos


def test_every_stage_config_exists_and_exports_every_expert():
    from moee.quickstart import CONFIGS

    assert all((CONFIGS / config).is_file() for _, _, config in STAGES)
    exports = [e for _, exports, _ in STAGES for e in exports]
    assert exports == ["backbone_image.safetensors", "backbone.safetensors",
                       *(f"expert_{e}.safetensors" for e in BASIC_EMOTIONS),
                       "speech_emotion.safetensors", "gating.safetensors"]


def test_the_quickstart_runs_from_any_folder(tmp_path, monkeypatch):
    """Run from a folder that is not the repository, the quickstart trains every stage with
    the configs shipped in the package (their includes found beside them), at the seed asked,
    and everything the stages read and write is under runs/ of that folder."""
    from pathlib import Path

    import torch

    import moee
    from moee import quickstart
    from moee.evaluation.probes import cache_path
    from tests.foundation.test_configs import ParseOnlyCLI

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/synthemo/test").mkdir(parents=True)
    (tmp_path / "runs/synthemo/test/manifest.json").write_text("{}")
    monkeypatch.setenv("MOEE_CACHE", str(tmp_path / "cache"))
    cache_path().parent.mkdir(parents=True)
    cache_path().touch()
    trained = {}

    def fit(argv):  # the CLI, parsing only (and making the run's folder, as the trainer does)
        assert argv[:2] == ["fit", "--config"]
        config = Path(argv[2])
        assert config.is_relative_to(Path(moee.__file__).resolve().parent)
        trained[config.name] = ParseOnlyCLI(args=argv[1:], run=False).config
        Path(trained[config.name].trainer.default_root_dir).mkdir(parents=True)
        assert argv[3:] == ["--trainer.precision", quickstart.training_precision("auto"),
                            "--seed_everything", "3", "--data.init_args.seed", "3"]

    monkeypatch.setattr("moee.cli.main", fit)
    sampled = {}
    monkeypatch.setattr(quickstart, "animate_held_out",
                        lambda *args, dtype: sampled.setdefault("dtype", dtype) and [])
    monkeypatch.setattr(quickstart, "read_held_out", lambda made, probes: {})
    monkeypatch.setattr("moee.evaluation.probes.load_probes", lambda: None)
    quickstart.quickstart(seed=3)
    assert list(trained) == [Path(config).name for _, _, config in STAGES]
    for config in trained.values():
        assert config.seed_everything == 3 and config.data.init_args.seed == 3  # every stage
        init = config.model.init_args
        for path in (config.trainer.default_root_dir, init.export_path, config.data.init_args.train,
                     *(init.get("init_weights") or [])):
            assert path.startswith("runs/"), path
    assert (tmp_path / "runs/tiny/quickstart.json").is_file()
    bf16 = quickstart.training_precision("auto") == "bf16-mixed"  # sampled as it trained
    assert sampled["dtype"] == (torch.bfloat16 if bf16 else torch.float32)


@pytest.mark.parametrize("amx, avx512_bf16, expected", [
    (True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "32-true")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, amx, avx512_bf16,
                                                               expected):
    import torch

    from moee.quickstart import training_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert training_precision("auto") == expected
    assert training_precision("32-true") == "32-true"  # an explicit choice stands


def person(identity: str = "synth00053") -> Person:
    from moee.data.synth.generator import ClipConfig, make_clip

    config = ClipConfig(num_frames=8)
    clips = {e: make_clip(config, 53, i, emotion=e) for i, e in
             enumerate((NEUTRAL, *BASIC_EMOTIONS, *COMPOUND_EMOTIONS))}
    return Person(identity, clips[NEUTRAL].frames[0], clips)


def test_the_plan_asks_each_kind_of_condition_what_it_must_read_as():
    plan = plan_videos([person()])
    counts = {kind: sum(v.kind == kind for v in plan) for kind in KINDS}
    assert counts == {"basic": 6, "compound": 4, "text": 6, "speech": 6}
    for video in plan:
        condition = parse_emotion(video.condition)
        assert condition.kind == video.kind
        assert video.speech_clip.meta.emotion == video.asked  # its speech speaks the emotion
        if video.kind == "text":
            assert video.condition == f"text:{video.speech_clip.meta.text}"
        if video.kind in ("basic", "compound"):
            assert video.condition == video.asked
    assert len({v.name for v in plan}) == len(plan)
    assert [v.kind for v in plan_videos([person()], kinds=("speech",))] == ["speech"] * 6


def test_ground_truth_videos_score_and_still_portraits_do_not(monkeypatch):
    """score_videos counts a video only when the judge reads the asked emotion on the right
    person, and correlates mouths with the speech clip's ground truth."""
    from moee.data.synth.face import mouth_opening_from_landmarks
    from moee.evaluation.probe_judge import VideoReading
    from moee.showcase import score_videos

    class TruthJudge:
        """Reads the emotion of the clip a video's frames come from, and its true mouth."""

        def read(self, frames, portrait):
            for clip in people.clips.values():
                if np.array_equal(frames, clip.frames):
                    probabilities = np.eye(11)[
                        ("neutral", *BASIC_EMOTIONS, *COMPOUND_EMOTIONS).index(clip.meta.emotion)]
                    return VideoReading(1.0, probabilities, portrait, 1.0,
                                        mouth_opening_from_landmarks(clip.landmarks),
                                        clip.aus.mean(0))
            return VideoReading(1.0, np.eye(11)[0], portrait, 1.0, np.zeros(len(frames)),
                                np.zeros(17))

        def reads_as(self, reading, emotion, portrait):
            return reading.emotion == emotion

    people = person()
    plan = plan_videos([people], kinds=("basic", "compound", "speech"))
    truth = score_videos(TruthJudge(), [(v, v.speech_clip.frames) for v in plan])
    assert truth.emotion == {"basic": (6, 6), "compound": (4, 4), "speech": (6, 6)}
    assert truth.identity == (16, 16) and truth.lip_sync == pytest.approx(1.0)
    assert sorted(truth.lip_sync_by_emotion) == sorted((*BASIC_EMOTIONS, *COMPOUND_EMOTIONS))
    assert all(r == pytest.approx(1.0) for r in truth.lip_sync_by_emotion.values())
    still = score_videos(TruthJudge(), [(v, np.repeat(people.portrait[None], 8, 0))
                                        for v in plan])
    assert still.emotion == {"basic": (0, 6), "compound": (0, 4), "speech": (0, 6)}
    assert still.lip_sync == 0.0
    assert set(still.lip_sync_by_emotion.values()) == {0.0}
    assert truth.lines()[3].startswith("lip sync by the speech clip's emotion: ")
    assert "basic 6/6 (100%)" in truth.lines()[0]
    assert truth.reads == {kind: {e: {e: 1} for e in BASIC_EMOTIONS}
                           for kind in ("basic", "speech")}
    assert still.reads["basic"] == {e: {"neutral": 1} for e in BASIC_EMOTIONS}
    assert still.lines()[4] == "basic labels read as (misses in brackets): " + ", ".join(
        f"{e} 0/1 (neutral 1)" for e in BASIC_EMOTIONS)
    assert still.lines()[5] == "speech voices read as (misses in brackets): " + ", ".join(
        f"{e} 0/1 (neutral 1)" for e in BASIC_EMOTIONS)
    assert still.as_dict()["basic_reads"]["happy"] == {"neutral": 1}
    assert still.as_dict()["speech_reads"]["sad"] == {"neutral": 1}
    assert "compound_reads" not in still.as_dict()

    class RefusingJudge(TruthJudge):
        def reads_as(self, reading, emotion, portrait):
            return False

    refused = score_videos(RefusingJudge(), [(v, v.speech_clip.frames) for v in plan])
    assert refused.emotion == {"basic": (0, 6), "compound": (0, 4), "speech": (0, 6)}
    assert refused.reads["basic"] == {e: {"refused by the judge": 1} for e in BASIC_EMOTIONS}


def test_a_split_without_complete_identities_is_one_clear_line(tmp_path):
    from moee.data.shards import ShardError
    from moee.showcase import held_out_people
    from tests.clips import write_test_shards

    folder = write_test_shards(tmp_path / "test", num_frames=8, size=32)
    with pytest.raises(ShardError, match="every emotion class") as error:
        held_out_people(folder)
    assert "\n" not in str(error.value)


@pytest.fixture
def trained_runs(tmp_path, monkeypatch):
    """A runs/ folder whose SynthEmo, probes and stage exports exist (empty files), wired into
    the quickstart module; returns the weights folder."""
    from moee import quickstart

    runs = tmp_path / "runs"
    weights = runs / "tiny" / "weights"
    (runs / "synthemo" / "test").mkdir(parents=True)
    (runs / "synthemo" / "test" / "manifest.json").write_text("{}")
    weights.mkdir(parents=True)
    for _, exports, _ in STAGES:
        for export in exports:
            (weights / export).touch()
    (weights / quickstart.STAMP).write_text(json.dumps({"format": quickstart.STAMP_FORMAT}))
    monkeypatch.setenv("MOEE_CACHE", str(tmp_path / "cache"))
    from moee.evaluation.probes import cache_path

    cache_path().parent.mkdir(parents=True)
    cache_path().touch()
    for name, value in {"RUNS": runs, "SYNTHEMO": runs / "synthemo", "WEIGHTS": weights,
                        "VIDEOS": runs / "tiny" / "videos"}.items():
        monkeypatch.setattr(quickstart, name, value)
    return weights


def test_a_rerun_skips_finished_steps_and_keeps_their_times(trained_runs, monkeypatch):
    from moee import quickstart

    record = trained_runs.parent / "quickstart.json"
    record.write_text('{"seconds": {"backbone": 280.0}}')
    asked = {}
    monkeypatch.setattr(quickstart, "animate_held_out",
                        lambda people, seconds, steps, strength, dtype: asked.update(
                            strength=strength) or [])
    monkeypatch.setattr(quickstart, "read_held_out", lambda made, probes: {"lip_sync_r": 0.7})
    monkeypatch.setattr("moee.evaluation.probes.load_probes", lambda: None)
    timings = quickstart.quickstart(strength=0.5)
    assert set(timings) == {"backbone", "animate"} and timings["backbone"] == 280.0
    assert asked == {"strength": 0.5}
    written = json.loads(record.read_text())
    assert written["seconds"] == timings and written["lip_sync_r"] == 0.7
    assert not list(record.parent.glob(".*partial"))


def test_weights_of_the_old_expert_recipe_are_one_line(trained_runs):
    """Experts that each trained their own Emotion-to-Latents cannot be mixed: the quickstart,
    which skips the stages whose exports exist, stops at loading them with one line that says
    how to retrain, not with a traceback."""
    import torch
    from safetensors.torch import save_file

    from moee import quickstart

    for index, export in enumerate(e for _, exports, _ in STAGES for e in exports):
        if export.startswith("expert_"):
            save_file({"emotion_to_latents.null_latent": torch.full((2,), float(index))},
                      trained_runs / export, metadata={"stage": "ExpertModule"})
        else:
            save_file({"x": torch.zeros(1)}, trained_runs / export)
    with pytest.raises(SystemExit) as stop:
        quickstart.main([])
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "quickstart --force" in message and "emotion_to_latents.null_latent" in message


def test_animate_held_out_samples_the_network_weights_and_people_it_is_given(tmp_path):
    """The Table 5 bench reads every variant through animate_held_out: the weights, the network
    (here the one-expert ablation), the SynthEmo split and the output folder are the ones given,
    with a real tiny network and real shards; the network an export does not fit refuses it."""
    import torch

    from moee.data.synth.cli import generate
    from moee.models.moee_net import MoEENetConfig
    from moee.models.objective import DiffusionObjective
    from moee.models.weights import (
        EXPERTS_KEY,
        GLOBAL_GATE_KEY,
        ArchitectureMismatchError,
        export_metadata,
    )
    from moee.quickstart import animate_held_out
    from moee.showcase import held_out_people
    from moee.stages import BackboneModule
    from moee.stages.losses import MoEELoss

    data = tmp_path / "synthemo"
    generate(out=str(data), size=64, frames=8, train=1, val=1, test=1, head_motion=0,
             progress=False)
    one_expert = {"preset": "tiny", "num_experts": 1}
    export = tmp_path / "backbone.safetensors"
    stage = BackboneModule(net=MoEENetConfig(**one_expert), mode="video", warm_experts=True,
                           objective=DiffusionObjective(prediction_type="sample"),
                           loss=MoEELoss(perceptual_weights=None), export_path=str(export))
    with torch.no_grad():  # an expert that changes the frames (both start at zero output)
        for name, parameter in stage.net.named_parameters():
            if ".emotion.experts." in name:
                parameter.normal_(std=0.05)
        stage.net.denoiser.unet.conv_out.weight.normal_(std=0.02)
    stage.on_train_end()
    assert {k: export_metadata(export)[k] for k in (EXPERTS_KEY, GLOBAL_GATE_KEY)} == {
        EXPERTS_KEY: "1", GLOBAL_GATE_KEY: "true"}
    settings = dict(people=0, seconds=0.32, steps=1, weights=[str(export)], data=data)

    made = animate_held_out(net=one_expert, out=tmp_path / "videos", **settings)
    person = held_out_people(data / "test")[0]
    assert sorted(video.condition for video, _ in made) == sorted(BASIC_EMOTIONS)
    assert {video.person.identity for video, _ in made} == {person.identity}
    assert all(frames.shape == (8, 64, 64, 3) for _, frames in made)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == sorted(
        f"{video.name}.mp4" for video, _ in made)
    again = animate_held_out(net=one_expert, out=None, **settings)  # seed-0 noise: the same
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(made, again))
    assert len(list(tmp_path.rglob("*.mp4"))) == len(made)  # out=None wrote nothing more
    # The six-expert default would load the one expert as its first (angry) without a shape
    # error and animate every other label with an untrained expert: the export says why not.
    with pytest.raises(ArchitectureMismatchError, match="trained with 1 expert") as error:
        animate_held_out(out=None, **settings)
    assert "\n" not in str(error.value) and "num_experts 1" in str(error.value)


def test_animate_held_out_samples_at_the_presets_steps_unless_told(monkeypatch):
    from moee.inference.pipeline import MoEEPipeline
    from moee.inference.sampling import PRESET_SAMPLING
    from moee.quickstart import animate_held_out

    class Built(Exception):
        pass

    asked = []

    def from_weights(net, weights, **kwargs):
        asked.append(kwargs["settings"].steps)
        raise Built

    monkeypatch.setattr(MoEEPipeline, "from_weights", from_weights)
    for steps in (None, 2):
        with pytest.raises(Built):
            animate_held_out(steps=steps, out=None)
    assert asked == [PRESET_SAMPLING["tiny"].steps, 2] == [4, 2]


@pytest.mark.parametrize("option", ["image_steps", "gating_steps", "sampling_steps"])
def test_a_step_budget_below_one_is_one_line_before_anything_runs(tmp_path, monkeypatch, option):
    from moee import quickstart

    monkeypatch.chdir(tmp_path)  # no SynthEmo here: the first step would be to write it
    monkeypatch.setattr("moee.cli.main", lambda argv: pytest.fail(f"{argv[0]} ran"))
    with pytest.raises(SystemExit) as stop:
        quickstart.main([f"--{option}", "0"])
    assert stop.value.code == (f"error: --{option} must be at least 1 (leave it out for the "
                               "recipe's), got 0")
    assert not (tmp_path / "runs").exists()


def test_a_budget_sets_every_stage_s_steps_and_a_step_option_overrides_it(trained_runs,
                                                                         monkeypatch):
    """``--budget small`` trains each stage for the steps BUDGETS gives it (the configs' own
    where it names none), ``--image_steps`` overrides one, and the weights folder records what
    each stage was trained with."""
    from moee import quickstart

    for export in trained_runs.iterdir():
        export.unlink()
    steps = {}

    def fit(argv):
        config = argv[2].rsplit("/", 1)[-1]
        tail = argv[argv.index("--trainer.max_steps") + 1] if "--trainer.max_steps" in argv \
            else None
        steps[config] = tail

    monkeypatch.setattr("moee.cli.main", fit)
    monkeypatch.setattr(quickstart, "animate_held_out", lambda *args, dtype: [])
    monkeypatch.setattr(quickstart, "read_held_out", lambda made, probes: {})
    monkeypatch.setattr("moee.evaluation.probes.load_probes", lambda: None)
    quickstart.quickstart(budget="small", image_steps=7, seed=2)
    small = quickstart.BUDGETS["small"]
    assert steps == {"backbone_image.yaml": "7", "backbone.yaml": str(small["backbone"]),
                     "experts.yaml": str(small["experts"]),
                     "speech_emotion.yaml": None, "gating.yaml": None}
    stamps = json.loads((trained_runs / quickstart.STAMP).read_text())
    assert stamps["backbone_image"]["max_steps"] == 7 and stamps["gating"]["seed"] == 2
    assert stamps["speech_emotion"]["max_steps"] is None
    record = json.loads((trained_runs.parent / "quickstart.json").read_text())
    assert record["budget"] == "small" and record["seed"] == 2


def test_a_rerun_with_another_seed_or_budget_refuses_the_weights_it_finds(trained_runs,
                                                                         monkeypatch):
    """Finished stages are skipped only when they were trained as now asked: weights of
    another seed or budget in the folder are one line, not silently reused."""
    from moee import quickstart

    precision = quickstart.training_precision("auto")
    stamps = {name: {"seed": 0, "precision": precision,
                     "max_steps": quickstart.BUDGETS["tiny"].get(name)}
              for name, _, _ in STAGES}
    (trained_runs / quickstart.STAMP).write_text(
        json.dumps({"format": quickstart.STAMP_FORMAT, **stamps}))
    monkeypatch.setattr("moee.cli.main", lambda argv: pytest.fail(f"{argv[2]} retrained"))
    for argv, what in ((["--seed", "1"], "'seed': 1"),
                       (["--budget", "small"], "'max_steps': 2800")):
        with pytest.raises(SystemExit) as stop:
            quickstart.main(argv)
        message = str(stop.value.code)
        assert message.startswith("error: ")
        assert "backbone_image.safetensors was trained with" in message and what in message
        assert "--force" in message and "\n" not in message
    monkeypatch.setattr(quickstart, "animate_held_out", lambda *args, dtype: [])
    monkeypatch.setattr(quickstart, "read_held_out", lambda made, probes: {})
    monkeypatch.setattr("moee.evaluation.probes.load_probes", lambda: None)
    assert "backbone_image" not in quickstart.quickstart(seed=0)  # as trained: skipped
    (trained_runs / quickstart.STAMP).write_text('{"backbone_image": ')  # a killed writer's
    with pytest.raises(SystemExit) as stop:
        quickstart.main([])
    assert "stages.json is unreadable" in str(stop.value.code)
    assert "--force" in str(stop.value.code) and "\n" not in str(stop.value.code)


@pytest.mark.parametrize("stamps", [None, {"backbone_image": {"seed": 0}}, {"format": 1}])
def test_a_folder_of_an_earlier_export_layout_is_refused_before_any_stage(
        trained_runs, monkeypatch, stamps):
    """Exports stamped with an earlier layout, or with none (exports and no stamps), are one
    line at the start, not a stage that fails to load them an hour in; --force retrains."""
    from moee import quickstart

    path = trained_runs / quickstart.STAMP
    path.unlink()
    if stamps is not None:
        path.write_text(json.dumps(stamps))
    monkeypatch.setattr("moee.cli.main", lambda argv: pytest.fail(f"{argv[2]} started"))
    with pytest.raises(SystemExit) as stop:
        quickstart.main([])
    message = str(stop.value.code)
    assert f"earlier MoEE (layout 1, now {quickstart.STAMP_FORMAT})" in message
    assert "--force" in message
    assert "\n" not in message
    trained = []
    monkeypatch.setattr("moee.cli.main", lambda argv: trained.append(argv[2]))
    monkeypatch.setattr(quickstart, "animate_held_out", lambda *args, dtype: [])
    monkeypatch.setattr(quickstart, "read_held_out", lambda made, probes: {})
    monkeypatch.setattr("moee.evaluation.probes.load_probes", lambda: None)
    quickstart.quickstart(force=True)
    assert len(trained) == len(STAGES) + 1  # SynthEmo too
    assert json.loads(path.read_text())["format"] == quickstart.STAMP_FORMAT


def test_the_table5_bench_trains_a_budget_and_refuses_weights_of_another(
        tmp_path, monkeypatch, benchmarks_importable):
    """``bench_synthemo.py --budget small`` gives every stage the budget's steps (the config's
    where the budget names none) and takes a quickstart's weights only of its seed and budget."""
    import bench_synthemo

    from moee import quickstart

    ran = []
    monkeypatch.setattr(bench_synthemo, "moee", ran.append)
    bench = bench_synthemo.Bench(tmp_path / "out", tmp_path / "data", 1.0, 1, "32-true", "small")
    for stage in ("backbone_image", "speech_emotion"):
        bench.fit(bench_synthemo.FULL, stage, [], f"{stage}.safetensors")
    steps = [argv[argv.index("--trainer.max_steps") + 1] for argv in ran]
    assert steps == [str(quickstart.BUDGETS["small"]["backbone_image"]),
                     str(bench_synthemo.recipe("speech_emotion")["trainer"]["max_steps"])]
    full = tmp_path / "full"
    full.mkdir()
    stamp = {"seed": 1, "precision": "32-true", "max_steps": 2800}
    layout = {"format": quickstart.STAMP_FORMAT}
    (full / quickstart.STAMP).write_text(json.dumps({**layout, "backbone_image": stamp}))
    bench.check_full(full)  # the same seed and budget: taken
    (full / quickstart.STAMP).write_text(json.dumps({"backbone_image": stamp}))
    with pytest.raises(SystemExit) as stop:
        bench.check_full(full)  # an earlier layout
    assert "earlier MoEE" in str(stop.value.code)
    (full / quickstart.STAMP).write_text(
        json.dumps({**layout, "backbone_image": {**stamp, "seed": 0}}))
    with pytest.raises(SystemExit) as stop:
        bench.check_full(full)
    assert "seed 0" in str(stop.value.code) and "budget small" in str(stop.value.code)


def test_the_table5_bench_scores_each_clip_under_its_label_and_its_text(
        tmp_path, monkeypatch, capsys, benchmarks_importable):
    """``Bench.evaluate`` runs ``moee test`` once per conditioning: every variant's row under
    the clips' labels into ``table5``, under their descriptions into ``table5_text``, the
    ground truth in both; the overlays it writes parse as ``moee test`` configs."""
    from pathlib import Path

    import bench_synthemo

    from moee.cli import main as moee_main
    from moee.quickstart import CONFIGS

    def fake_test(argv: list[str]) -> None:  # writes the table `moee test` would
        overlay = yaml.safe_load(Path(argv[-1]).read_text())["model"]["init_args"]
        rows = [{"model": row["name"], "FID": 1.0 + (row.get("conditioning") == "text")}
                for row in overlay["models"]]
        (tmp_path / f"{overlay['table']}.json").write_text(json.dumps({"rows": rows}))

    monkeypatch.setattr(bench_synthemo, "moee", fake_test)
    tables = bench_synthemo.Bench(tmp_path, tmp_path / "data", 1.0, 0, "32-true").evaluate(None)
    variants = [bench_synthemo.FULL, bench_synthemo.NO_MOE, bench_synthemo.NO_GLOBAL,
                bench_synthemo.NO_MNS]
    assert {name: row["FID"] for name, row in tables["label"].items()} == {
        **dict.fromkeys(variants, 1.0), "Ground truth": 1.0}
    assert {name: row["FID"] for name, row in tables["text"].items()} == {
        **dict.fromkeys(variants, 2.0), "Ground truth": 1.0}
    for conditioning, table in bench_synthemo.TABLES.items():
        with pytest.raises(SystemExit):
            moee_main(["test", "--config", str(CONFIGS / "tiny" / "test.yaml"), "--config",
                       str(tmp_path / f"{table}_overlay.yaml"), "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
        assert printed["table"] == table
        assert [(row["source"], row["conditioning"]) for row in printed["models"]] == [
            ("model", conditioning)] * 4 + [("ground_truth", "label")]


def test_the_table5_bench_summarises_seeds(tmp_path, monkeypatch, capsys, benchmarks_importable):
    """``bench_synthemo.py --seeds`` prints each cell's mean ± sample sd over the runs, and at
    how many runs the full model is strictly ahead of each ablation (lower FID is ahead,
    higher basic accuracy is ahead, a tie is not); a run without its tables is refused."""
    import bench_synthemo

    def reading(basic: float) -> dict:
        return {"emotion_accuracy": {"basic": basic, "compound": 0.5, "text": 0.5,
                                     "speech": 0.5},
                "identity_accuracy": 1.0, "lip_sync_r": 0.5}

    runs = []
    for seed, (full_fid, moe_fid, moe_basic) in enumerate([(10.0, 12.0, 0.5), (14.0, 13.0, 0.75)]):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "table5.json").write_text(json.dumps({"rows": [
            {"model": bench_synthemo.FULL, "FID": full_fid},
            {"model": bench_synthemo.NO_MOE, "FID": moe_fid}]}))
        (run / "neutral_portraits.json").write_text(json.dumps(
            {bench_synthemo.FULL: reading(0.75), bench_synthemo.NO_MOE: reading(moe_basic)}))
        runs.append(str(run))
    (tmp_path / "s1" / "table5_text.json").write_text(json.dumps({"rows": [
        {"model": bench_synthemo.FULL, "FID": 9.0},
        {"model": bench_synthemo.NO_MOE, "FID": 11.0}]}))  # text-conditioned, one run has it
    monkeypatch.setattr("sys.argv", ["bench_synthemo.py", "--seeds", *runs])
    bench_synthemo.main()
    sections = capsys.readouterr().out.split("### ")
    (text,) = [s for s in sections if "each clip under its description: mean ± sd over 1 " in s]
    assert f"| {bench_synthemo.FULL} | 9.00 |" in text
    assert f"| {bench_synthemo.NO_MOE} | 1/1 |" in text
    lines = "### ".join(s for s in sections if s != text).splitlines()
    rows = [line for line in lines if "±" in line and not line.startswith("###")]
    # FID 10, 14: mean 12, sd 2.83; 12, 13: 12.5 ± 0.71; basic 75 %, 75 % and 50 %, 75 %
    assert rows[0].startswith(f"| {bench_synthemo.FULL} | 12.00 ± 2.83 |")
    assert rows[1].startswith(f"| {bench_synthemo.NO_MOE} | 12.50 ± 0.71 |")
    assert rows[2].startswith(f"| {bench_synthemo.FULL} | 75 % ± 0 | 50 % ± 0 |")
    assert rows[3].startswith(f"| {bench_synthemo.NO_MOE} | 62 % ± 18 | 50 % ± 0 |")
    ahead = [line for line in lines if "/2 |" in line]
    assert ahead[0] == f"| {bench_synthemo.NO_MOE} | 1/2 |"  # FID: ahead at seed 0 only
    assert ahead[1].startswith(f"| {bench_synthemo.NO_MOE} | 1/2 | 0/2 |")  # a tie is not
    (tmp_path / "s1" / "table5_text.json").write_text(json.dumps({"rows": [
        {"model": bench_synthemo.FULL, "FID": 9.0}]}))  # a text table of other models
    with pytest.raises(SystemExit) as stop:
        bench_synthemo.main()
    assert "table5_text.json scores other models" in str(stop.value.code)
    (tmp_path / "s1" / "table5_text.json").unlink()
    (tmp_path / "s1" / "neutral_portraits.json").write_text(json.dumps(
        {bench_synthemo.FULL: reading(0.75)}))  # another bench's variants
    with pytest.raises(SystemExit) as stop:
        bench_synthemo.main()
    assert "variants differ" in str(stop.value.code) and "s1" in str(stop.value.code)
    for broken in ("", '{"rows": [{"FID": 1.0}]}'):  # truncated; a row without its model
        (tmp_path / "s1" / "table5.json").write_text(broken)
        with pytest.raises(SystemExit) as stop:
            bench_synthemo.main()
        assert "not a finished run" in str(stop.value.code) and "s1" in str(stop.value.code)
    (tmp_path / "s1" / "table5.json").unlink()
    with pytest.raises(SystemExit) as stop:
        bench_synthemo.main()
    assert "not a finished run" in str(stop.value.code) and "\n" not in str(stop.value.code)


def test_a_one_frame_sheet_shows_each_video_s_last_frame():
    """The Table 5 sheet has one frame per video: the last, after the emotion's onset, not the
    first, which still shows the portrait's expression."""
    from types import SimpleNamespace

    from moee.showcase import SHEET_LABELS, showcase_sheet

    person = Person("p", np.zeros((32, 32, 3), np.uint8), {})
    video = np.broadcast_to(np.arange(16, dtype=np.uint8)[:, None, None, None], (16, 32, 32, 3))
    made = [(SimpleNamespace(kind="basic", asked="angry", person=person), video)]
    one = showcase_sheet(made, identities=1, frames=1)
    assert one[32:64, SHEET_LABELS:].min() == 15  # the angry row (after the portrait's): the last
    four = showcase_sheet(made, identities=1, frames=4)
    assert [int(four[32, SHEET_LABELS + 32 * k, 0]) for k in range(4)] == [0, 5, 10, 15]
