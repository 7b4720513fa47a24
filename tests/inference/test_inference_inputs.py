"""Inference inputs without the network: images, faces, emotion tracks, jobs files."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from moee.emotions import EmotionSpecError, parse_emotion
from moee.inference.conditions import EmotionTrack, Routing, batch_routing
from moee.inference.lightning import AnimationJob, read_jobs
from moee.inference.portrait import (
    InputError,
    Portrait,
    PortraitSettings,
    load_image,
    prepare_portrait,
)
from moee.inference.sampling import (
    Guidance,
    SamplerSettings,
    face_region_weights,
    make_scheduler,
)
from moee.models.objective import DiffusionObjective


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# ---- images -------------------------------------------------------------------------------


def test_rgba_is_composited_on_the_background():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, ..., 3] = 255  # top half opaque red, bottom half transparent
    out = load_image(_encoded(Image.fromarray(rgba, "RGBA"), "PNG"), background=(0, 0, 255))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[7, 7]) == (0, 0, 255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA", "1"])
def test_any_mode_becomes_rgb(mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 10, 3), np.uint8))
    converted = image.convert("L").convert("I;16") if mode == "I;16" else image.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = load_image(_encoded(converted, fmt))
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (20, 10), (10, 20, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = load_image(_encoded(image, "JPEG", exif=exif.tobytes()))
    assert out.shape == (20, 10, 3)


def test_very_large_images_are_downscaled():
    out = load_image(Image.new("RGB", (3000, 1500)), max_side=1000)
    assert out.shape == (500, 1000, 3)


def test_unreadable_image_is_one_line(tmp_path):
    path = tmp_path / "face.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image") as info:
        load_image(path)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="cannot read image"):
        load_image(tmp_path / "missing.png")


# ---- faces (the real MediaPipe detector) ----------------------------------------------------


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data", reason="scikit-image gives the real photo")
    return data.astronaut()


@pytest.fixture(scope="module")
def detector():
    from moee.data.faces import make_detector

    return make_detector("mediapipe")


def test_face_crop_of_a_real_photo(astronaut, detector):
    portrait = prepare_portrait(astronaut, 64, detector=detector)
    x0, y0, side = portrait.box
    assert portrait.crop.shape == (64, 64, 3)
    assert 150 < x0 + side / 2 < 300 and 60 < y0 + side / 2 < 220  # the astronaut's face
    reference = portrait.reference()
    assert reference.shape == (3, 64, 64) and -1 <= reference.min() <= reference.max() <= 1


def test_no_face_and_two_faces_are_errors(astronaut, detector):
    with pytest.raises(InputError, match="no face found"):
        prepare_portrait(np.full((256, 256, 3), 128, np.uint8), 64, detector=detector)
    two = np.concatenate([astronaut[:300, 80:330]] * 2, axis=1)
    with pytest.raises(InputError, match="2 faces found"):
        prepare_portrait(two, 64, detector=detector)


def test_face_crops_can_skip_detection():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 10:50] = 255  # the centre square
    portrait = prepare_portrait(image, 16, PortraitSettings(detect=False))
    assert portrait.box == (10, 0, 40) and (portrait.crop == 255).all()


def test_paste_back_is_feathered_and_even_sized():
    photo = np.zeros((101, 81, 3), np.uint8)
    portrait = Portrait(photo, box=(-10, 20, 60), crop=np.zeros((16, 16, 3), np.uint8))
    out = portrait.paste(np.full((2, 16, 16, 3), 200, np.uint8), feather=0.2)
    assert out.shape == (2, 100, 80, 3)
    assert (out[:, 50, 20] == 200).all()  # inside the crop, away from its edge
    assert (out[:, 5, 70] == 0).all() and (out[:, 90, 20] == 0).all()  # outside it
    ramp = out[0, 50, 20:60, 0]
    assert ramp[-1] < 200 and (np.diff(ramp.astype(int)) <= 0).all()  # fades towards the edge


# ---- emotion tracks ------------------------------------------------------------------------


def test_routing_of_each_condition():
    assert Routing.of(parse_emotion("sad@0.4")) == Routing(expert=4)
    mix = Routing.of(parse_emotion("happy:0.7,surprised:0.3"))
    assert mix.expert is None and mix.weights == pytest.approx((0, 0, 0, 0.7, 0, 0.3))
    compound = Routing.of(parse_emotion("sadly surprised@0.5"))  # the shares, not the intensity
    assert compound.kind == "shares" and compound.shares == pytest.approx((0, 0, 0, 0, 0.4, 0.6))
    for gated in ("neutral", "AU6:0.8", "text:a smile", "speech"):
        assert Routing.of(parse_emotion(gated)) == Routing()
    cpu = torch.device("cpu")
    both = batch_routing([compound, Routing.of(parse_emotion("happily surprised"))], cpu)
    assert both["weights"] is None and both["expert"].dtype == torch.float32
    torch.testing.assert_close(both["expert"], torch.tensor([[0, 0, 0, 0, 0.4, 0.6],
                                                             [0, 0, 0, 0.4, 0, 0.6]]))
    assert batch_routing([Routing.of(parse_emotion("sad"))] * 2, cpu) == {"expert": 4,
                                                                          "weights": None}
    with pytest.raises(ValueError, match="routed alike"):
        batch_routing([compound, mix], cpu)


def test_timeline_blends_linearly_around_each_switch():
    track = EmotionTrack.parse("0s:neutral,3s:happy,6s:sad", transition=1.0)
    assert track.blend(1.0) == [(0, 1.0)]
    assert track.blend(3.0) == [(0, 0.5), (1, 0.5)]
    assert track.blend(3.25) == [(0, pytest.approx(0.25)), (1, pytest.approx(0.75))]
    assert track.blend(4.0) == [(1, 1.0)]
    assert track.blend(9.0) == [(2, 1.0)]
    happy_to_sad = track.routing(track.blend(6.25))
    assert happy_to_sad.expert is None
    assert happy_to_sad.weights == pytest.approx((0, 0, 0, 0.25, 0.75, 0))
    neutral_to_happy = track.routing(track.blend(3.0))  # neutral has no weights: uniform
    assert neutral_to_happy.weights == pytest.approx([1 / 12] * 3 + [1 / 12 + 0.5] + [1 / 12] * 2)
    hard = EmotionTrack.parse("0s:neutral,3s:happy", transition=0)
    assert hard.blend(2.99) == [(0, 1.0)] and hard.blend(3.0) == [(1, 1.0)]


def test_unknown_emotion_is_rejected():
    with pytest.raises(EmotionSpecError, match="unknown emotion"):
        EmotionTrack.parse("0s:neutral,2s:ecstatic")


# ---- sampler settings ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "dpmpp", "euler"])
def test_schedulers_follow_the_training_objective(name):
    objective = DiffusionObjective(prediction_type="v_prediction")
    scheduler = make_scheduler(name, objective)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.timestep_spacing == "trailing"
    assert scheduler.config.beta_schedule == "scaled_linear"
    scheduler.set_timesteps(4)
    assert int(scheduler.timesteps[0]) == 999  # trailing spacing starts at pure noise


def test_guidance_combines_and_skips_unneeded_branches():
    uncond, audio, full = 1.0, 2.0, 4.0
    three = Guidance(3.0, 2.0)
    assert three.combine(torch.tensor([uncond, audio, full])) == pytest.approx(1 + 3 * 1 + 2 * 2)
    assert len(three.branches) == 3
    assert len(Guidance(1.0, 1.0).branches) == 1 and len(Guidance(2.0, 2.0).branches) == 2
    assert Guidance(2.0, 2.0).combine(torch.tensor([uncond, full])) == pytest.approx(1 + 2 * 3)
    assert SamplerSettings(audio_guidance=2, emotion_guidance=3).guidance == Guidance(2, 3)


def test_composed_guidance_sums_each_parts_emotion_direction():
    uncond, audio, main, adverb = 1.0, 2.0, 4.0, 7.0
    composed = SamplerSettings(audio_guidance=3, emotion_guidance=2,
                               compose_compounds=1.5).compound_guidance
    assert composed == Guidance(3.0, 2.0, (1.0, 1.5))
    assert composed.combine(torch.tensor([uncond, audio, main, adverb])) == pytest.approx(
        1 + 3 * (2 - 1) + 2 * (1 * (4 - 2) + 1.5 * (7 - 2)))
    assert composed.branches == ((True, True), (False, True), (False, False), (False, False))
    assert composed.branch_parts == (0, 0, 0, 1)  # the unconditional branches use the main part
    # equal scales keep both composed branches: a part cannot share the unconditional one
    assert len(Guidance(2.0, 2.0, (1.0, 1.0)).branches) == 4
    assert SamplerSettings().compound_guidance == SamplerSettings().guidance  # off by default
    louder = SamplerSettings(audio_guidance=3, compose_compounds=1.5, compound_audio_guidance=5)
    assert louder.compound_guidance.audio == 5 and louder.guidance.audio == 3


def test_intensity_guidance_weighs_each_emotion_part_by_its_intensity():
    weighted = SamplerSettings(audio_guidance=2, emotion_guidance=3, intensity_guidance=True)
    regional = replace(weighted, compose_compounds=2.0, compound_regions=0.5)
    half, full = (regional.part_weights(parse_emotion(f"sadly surprised@{i}")) for i in (0.5, 1))
    assert np.allclose(half, np.array(full) / 2)
    assert full == replace(regional, intensity_guidance=False).part_weights(
        parse_emotion("sadly surprised@1"))


def test_regional_composition_weights_each_face_region_by_its_parts():
    settings = SamplerSettings(compose_compounds=2.0, compound_regions=0.5)
    (surprised, sad) = settings.part_weights(parse_emotion("sadly surprised"))
    assert surprised == pytest.approx((0.0, 2 * 0.8658), abs=1e-3)  # (upper, lower face)
    assert sad == pytest.approx((2 * 1.047, 0.0), abs=1e-3)
    whole = replace(settings, compound_regions=None)
    assert whole.part_weights(parse_emotion("sadly surprised")) == ((1.0, 1.0), (2.0, 2.0))
    assert settings.part_weights(parse_emotion("happily sad")) == ((1.0, 1.0), (2.0, 2.0))
    rows = face_region_weights(torch.tensor([[3.0, 1.0], [0.0, 2.0]]), 32, 0.5)
    assert rows.shape == (2, 1, 1, 32, 1)
    column = rows[0].flatten()
    assert column[0] == pytest.approx(3.0, abs=1e-3) and column[-1] == pytest.approx(1.0, abs=1e-3)
    assert bool((column[1:] <= column[:-1]).all())  # one ramp from the upper to the lower face
    assert column[15] > 2.0 > column[16]  # the boundary sits at half the height
    flat = face_region_weights(torch.tensor([[3.0, 1.0]]), 32, None)
    assert flat.shape == (1, 1, 1, 1, 1) and float(flat) == 2.0
    uncond, audio, main, adverb = (torch.full((2, 1, 1, 32, 1), v) for v in (1., 2., 4., 7.))
    guided = settings.compound_guidance.combine(torch.stack([uncond, audio, main, adverb]),
                                                torch.stack([rows, rows.flip(0)]))
    expected = 1 + 3.5 * (2 - 1) + 2.5 * (rows * (4 - 2) + rows.flip(0) * (7 - 2))
    torch.testing.assert_close(guided, expected)


# ---- jobs files ----------------------------------------------------------------------------


def test_jobs_from_csv_and_jsonl(tmp_path):
    (tmp_path / "jobs.csv").write_text(
        "image,audio,emotion,output,seed\nface.png,a.wav,happily surprised,out/1.mp4,3\n"
        "face.png,b.wav,,out/2.mp4,\n")
    jobs = read_jobs(tmp_path / "jobs.csv")
    assert jobs[0] == AnimationJob(str(tmp_path / "face.png"), str(tmp_path / "a.wav"),
                                   str(tmp_path / "out/1.mp4"), "happily surprised", 3)
    assert jobs[1].emotion == "neutral" and jobs[1].seed is None
    lines = [{"image": "/abs/face.png", "audio": "a.wav", "output": "o.mp4", "emotion": "sad"}]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (job,) = read_jobs(tmp_path / "jobs.jsonl")
    assert job.image == "/abs/face.png" and job.emotion == "sad"


def test_bad_jobs_file_is_one_line(tmp_path):
    (tmp_path / "jobs.csv").write_text("image,audio\nface.png,a.wav\n")
    with pytest.raises(InputError, match="job 1 needs image, audio, output"):
        read_jobs(tmp_path / "jobs.csv")
    with pytest.raises(InputError, match="not found"):
        read_jobs(tmp_path / "nope.csv")


def test_onset_weights_rise_smoothly_from_zero_to_one_over_the_onset():
    settings = SamplerSettings(emotion_onset=0.32)  # 8 frames at 25 fps
    first = settings.onset_weights(0, 8)
    assert first[0] == 0 and bool((first.diff() > 0).all()) and first[-1] < 1
    assert first[4] == pytest.approx(0.5)  # the smoothstep's midpoint at half the onset
    assert settings.onset_weights(8, 8) is None  # a clip after the onset: the plain guidance
    torch.testing.assert_close(settings.onset_weights(4, 8)[:4], first[4:])
    assert SamplerSettings().onset_weights(0, 8) is None
