"""``benchmarks/bench_stills.py``: stills of every basic emotion, read by the probes and compared,
region by region, with the apex frame of the clip whose audio they heard."""

import sys

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from moee.data.synth.generator import ClipConfig, generate_dataset
from moee.emotions import BASIC_EMOTIONS
from moee.evaluation.probes import SynthEmoProbes, save_probes
from moee.models.moee_net import MoEENet, MoEENetConfig
from moee.showcase import held_out_people


@pytest.fixture(scope="module")
def synthemo(tmp_path_factory):
    """A SynthEmo with one held-out person (8 frames a clip)."""
    return generate_dataset(tmp_path_factory.mktemp("synthemo"),
                            ClipConfig(seed=3, size=64, num_frames=8), (1, 1, 1), progress=False)


@pytest.fixture
def bench_stills(benchmarks_importable, tmp_path, monkeypatch):
    """The bench, with untrained probes in the cache (the reads are not under test)."""
    import bench_stills

    monkeypatch.setenv("MOEE_CACHE", str(tmp_path / "cache"))
    save_probes(SynthEmoProbes(64), {})
    return bench_stills


@pytest.fixture
def tiny_export(tmp_path):
    path = tmp_path / "backbone_image.safetensors"
    net = MoEENet(MoEENetConfig(preset="tiny"))  # its parameters, a tied one once
    save_file({name: p.detach() for name, p in net.named_parameters()}, str(path))
    return str(path)


def run(bench_stills, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_stills.py", *argv])
    bench_stills.main()


def region_table(printed: str, title: str = "pixel error") -> dict[str, list[float]]:
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    return {line.split()[0]: [float(x) for x in line.split()[1:]]
            for line in lines[start + 2:start + 2 + len(BASIC_EMOTIONS)]}  # title, regions


def test_stills_are_compared_with_the_apex_of_the_clip_they_heard(bench_stills, synthemo,
                                                                  tiny_export, tmp_path,
                                                                  monkeypatch, capsys):
    """A draw that returns each clip's own apex frame errs 0 in every region, and its sheet is
    the portrait over those frames; one that returns the portrait errs as the printed
    portrait reference does, and where the emotion shows (the surprised mouth); every still
    is read once."""
    person, = held_out_people(synthemo / "test")

    def truths(*_args, **_kwargs):
        clips = [person.clips[e] for e in BASIC_EMOTIONS]
        return np.stack([c.frames[bench_stills.apex_frame(c)] for c in clips])

    monkeypatch.setattr(bench_stills, "draw_stills", truths)
    sheet = tmp_path / "stills.png"
    run(bench_stills, monkeypatch, tiny_export, "--test", str(synthemo / "test"),
        "--guidance", "2", "--noise_seeds", "2", "--sheet", str(sheet))
    printed = capsys.readouterr().out
    assert '"emotion_read": ' in printed and '"identity": ' in printed
    assert '/12"' in printed  # 2 draws x 1 person x 6 emotions
    confusion = [line.split()[1:] for line in printed.splitlines()
                 if line.split() and line.split()[0] in BASIC_EMOTIONS and "." not in line]
    assert [sum(map(int, counts)) for counts in confusion] == [2] * len(BASIC_EMOTIONS)
    assert all(error == 0.0 for row in region_table(printed).values() for error in row)
    drawn = np.asarray(Image.open(sheet))
    assert drawn.shape == (64 * (1 + len(BASIC_EMOTIONS)), 64, 3)
    np.testing.assert_array_equal(drawn[:64], person.portrait)
    np.testing.assert_array_equal(drawn[64:].reshape(-1, 64, 64, 3), truths())

    monkeypatch.setattr(bench_stills, "draw_stills",
                        lambda *_a, **_k: np.stack([person.portrait] * len(BASIC_EMOTIONS)))
    run(bench_stills, monkeypatch, tiny_export, "--test", str(synthemo / "test"),
        "--guidance", "2", "--noise_seeds", "1")
    printed = capsys.readouterr().out
    drawn, portrait = region_table(printed), region_table(printed, "the portrait itself")
    assert drawn == portrait
    assert portrait["surprised"][bench_stills.REGIONS.index("mouth")] > 5


def test_a_draw_is_one_still_per_emotion_and_fixed_by_its_seed(bench_stills, synthemo,
                                                              tiny_export):
    """The real sampler on a random tiny network: (6, 64, 64, 3) uint8, the same draw for the
    same seed, another for another seed."""
    from moee.data.batch import from_numpy_frames
    from moee.inference.pipeline import MoEEPipeline
    from moee.inference.sampling import SamplerSettings

    pipeline = MoEEPipeline.from_weights(MoEENetConfig(preset="tiny"), [tiny_export],
                                         settings=SamplerSettings(steps=2), progress=False)
    person, = held_out_people(synthemo / "test")
    latents = bench_stills.basic_emotion_latents(pipeline)

    def draw(seed: int) -> np.ndarray:
        return bench_stills.draw_stills(pipeline, from_numpy_frames(person.portrait), latents,
                                        bench_stills.apex_audio(person), 2.0, seed)

    first = draw(0)
    assert first.shape == (len(BASIC_EMOTIONS), 64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(draw(0), first)
    assert np.abs(draw(1).astype(int) - first).mean() > 1


def test_a_missing_split_or_no_steps_is_one_line(bench_stills, tiny_export, tmp_path,
                                                  monkeypatch, capsys):
    with pytest.raises(SystemExit, match="^error: .*") as stop:
        run(bench_stills, monkeypatch, tiny_export, "--test", str(tmp_path / "absent"))
    assert "\n" not in str(stop.value.code)
    with pytest.raises(SystemExit):
        run(bench_stills, monkeypatch, tiny_export, "--steps", "0")
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err
