"""MoEEPipeline with the tiny random-weight network at 64 px: clips, guidance, emotions.

Spies (hooks and wrapped methods) check what reaches the network on each call.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from moee.data.media import normalize_track
from moee.data.sampling import SPEECH_FRAMES
from moee.emotions import BASIC_EMOTIONS, parse_emotion
from moee.inference.conditions import EmotionTrack
from moee.inference.pipeline import MoEEPipeline
from moee.inference.portrait import InputError
from moee.inference.sampling import Guidance, SamplerSettings
from moee.models.emotion_moe import EmotionMoE
from moee.models.moee_net import MoEENet, MoEENetConfig
from tests.inference.nets import live_tiny_net

SIZE = 64


@pytest.fixture(scope="module")
def net() -> MoEENet:
    """The tiny network with live branches, in eval mode."""
    return live_tiny_net().eval()


def make_pipeline(net: MoEENet, **settings) -> MoEEPipeline:
    """A fast pipeline: 4-frame clips, 1 step, no guidance unless asked."""
    defaults = dict(steps=1, clip_frames=4, audio_guidance=1.0, emotion_guidance=1.0)
    return MoEEPipeline(net, SamplerSettings(**{**defaults, **settings}), progress=False)


def speech(seconds: float) -> np.ndarray:
    """A 16 kHz speech-like test signal: a 150 Hz buzz under a 4 Hz syllable envelope."""
    t = np.arange(round(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(
        np.float32)


class Spy:
    """Records every network call, ReferenceNet call, decoded clip and Emotion MoE call."""

    def __init__(self, net: MoEENet, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict] = []  # MoEENet.forward's Conditions fields and kwargs
        self.motion: list[torch.Tensor] = []  # motion latents given to the ReferenceNet
        self.decoded: list[torch.Tensor] = []  # clip latents given to the VAE decoder
        self.moe: list[tuple] = []  # (expert, weights) of the first Emotion MoE per call
        self.experts_run: set[int] = set()
        self.modules_run: dict[str, list] = {}
        self.handles = [net.register_forward_pre_hook(self._forward, with_kwargs=True)]
        first_moe = next(m for m in net.denoiser.modules() if isinstance(m, EmotionMoE))
        self.handles.append(first_moe.register_forward_pre_hook(self._moe))
        for module in net.denoiser.modules():
            if isinstance(module, EmotionMoE):
                for index, expert in enumerate(module.experts):
                    self.handles.append(expert.register_forward_hook(
                        lambda *_, i=index: self.experts_run.add(i)))
        encode_reference, decode = net.encode_reference, net.vae.decode

        def spy_reference(image, motion_latents=None, **kwargs):
            self.motion.append(motion_latents.clone())
            return encode_reference(image, motion_latents, **kwargs)

        def spy_decode(latents):
            self.decoded.append(latents.clone())
            return decode(latents)

        monkeypatch.setattr(net, "encode_reference", spy_reference)
        monkeypatch.setattr(net.vae, "decode", spy_decode)

    def watch(self, name: str, module: torch.nn.Module) -> None:
        """Record the first positional input of ``module`` on every call under ``name``."""
        self.modules_run[name] = []
        self.handles.append(module.register_forward_pre_hook(
            lambda _, args: self.modules_run[name].append(args[0])))

    def _forward(self, _, args, kwargs):
        conditions = args[2]
        self.calls.append({"batch": args[0].shape[0], **kwargs,
                           **{f.name: getattr(conditions, f.name) for f in fields(conditions)}})

    def _moe(self, _, args):
        self.moe.append((args[2], args[3]))

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def spy(net, monkeypatch):
    spy = Spy(net, monkeypatch)
    yield spy
    spy.remove()


def run(pipeline: MoEEPipeline, emotion: str, seconds: float, seed: int = 0) -> np.ndarray:
    reference = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    track = EmotionTrack.parse(emotion, pipeline.settings.transition)
    return pipeline.generate(reference, speech(seconds), track,
                             torch.Generator().manual_seed(seed))


def test_clips_are_continuous_and_cover_the_audio(net, spy):
    frames = run(make_pipeline(net, clip_frames=8), "happy", 1.3)
    assert frames.shape == (33, SIZE, SIZE, 3) and frames.dtype == np.uint8  # ceil(1.3 * 25)
    clips = 5
    assert len(spy.motion) == len(spy.decoded) == clips  # ReferenceNet once per clip
    assert len(spy.calls) == clips  # clips × 1 step
    first = spy.motion[0]
    assert torch.equal(first[:, 0], first[:, 1])  # the reference latent, repeated
    for k in range(clips - 1):
        assert torch.equal(spy.motion[k + 1], spy.decoded[k][:, -2:])  # exact float latents


def test_bf16_network_samples_several_clips_close_to_float32(net):
    """The sampler runs in float32; the next clip's motion latents go back to the network's
    dtype (a bf16 network once failed on its second clip)."""
    in_bf16 = copy.deepcopy(net).to(torch.bfloat16)
    half = run(make_pipeline(in_bf16, clip_frames=4), "happy", 0.5).astype(np.float64)
    full = run(make_pipeline(net, clip_frames=4), "happy", 0.5).astype(np.float64)
    assert half.shape == full.shape == (13, SIZE, SIZE, 3)  # 4 clips
    assert 0 < np.abs(half - full).mean() < 4  # bf16 rounding, on a 0–255 scale


def test_guidance_branches_run_in_one_batched_call(net, spy):
    pipeline = make_pipeline(net, steps=2, audio_guidance=2.0, emotion_guidance=3.0)
    frames = run(pipeline, "sad", 0.32)
    assert len(frames) == 8
    assert len(spy.calls) == 2 * 2  # 2 clips × 2 steps, one network call each
    for call in spy.calls:
        assert call["batch"] == 3
        assert call["drop_audio"].tolist() == [True, False, False]
        assert call["drop_emotion"].tolist() == [True, True, False]
        assert call["reference"].image_embeds.shape[0] == 3
    assert len(spy.motion) == 2


def test_seed_decides_the_noise(net):
    pipeline = make_pipeline(net)
    first, again, other = (run(pipeline, "neutral", 0.16, seed) for seed in (5, 5, 6))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp", "euler"])
def test_strength_starts_late_in_the_schedule_from_the_noised_reference(net, sampler):
    pipeline = make_pipeline(net, sampler=sampler, steps=10, strength=0.3)
    calls = []
    handle = net.register_forward_pre_hook(lambda _, args: calls.append(args[:2]))
    try:
        run(pipeline, "neutral", 0.16)  # one clip of 4 frames
    finally:
        handle.remove()
    schedule = pipeline.scheduler.timesteps
    assert pipeline.steps_per_clip == len(calls) == 3  # the last 3 of 10 steps
    assert [t.item() for _, t in calls] == schedule[-3:].tolist()
    if sampler == "ddim":  # its model input is the latent itself
        reference = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
        with torch.no_grad():
            latent = net.vae.encode(reference[None, None], sample=False)
        noise = torch.randn(latent.expand(1, 4, -1, -1, -1).shape,
                            generator=torch.Generator().manual_seed(0))
        alpha_bar = pipeline.objective.scheduler.alphas_cumprod[schedule[-3]]
        expected = alpha_bar.sqrt() * latent + (1 - alpha_bar).sqrt() * noise
        torch.testing.assert_close(calls[0][0], expected)
    with pytest.raises(ValueError, match="strength"):
        make_pipeline(net, strength=0)


def test_basic_label_runs_only_its_expert(net, spy):
    run(make_pipeline(net), "sad", 0.16)
    assert spy.moe == [(4, None)]
    assert spy.experts_run == {4}


def test_mixture_weights_replace_the_global_gate(net, spy):
    run(make_pipeline(net), "happy:0.7,surprised:0.3", 0.16)
    ((expert, weights),) = spy.moe
    assert expert is None
    expected = torch.tensor([0, 0, 0, 0.7, 0, 0.3]).expand(4, -1)  # one row per frame
    torch.testing.assert_close(weights, expected)


def test_compound_label_runs_its_two_experts_at_its_shares_without_gates(net, spy):
    moe = next(m for m in net.denoiser.modules() if isinstance(m, EmotionMoE))
    spy.watch("global_gate", moe.global_gate)
    run(make_pipeline(net), "sadly surprised", 0.16)
    ((expert, weights),) = spy.moe
    assert weights is None
    expected = torch.tensor([0, 0, 0, 0, 0.4, 0.6]).expand(4, -1)  # one row per frame
    torch.testing.assert_close(expert, expected)
    assert spy.experts_run == {4, 5}
    assert not spy.modules_run["global_gate"]


def test_composed_compound_guides_each_emotion_through_its_own_expert(net, spy):
    spy.watch("label", net.emotion_to_latents.to_queries["label"])
    pipeline = make_pipeline(net, audio_guidance=2.0, emotion_guidance=3.0, compose_compounds=1.5)
    run(pipeline, "sadly surprised@0.5", 0.16)
    (call,) = spy.calls
    assert call["batch"] == 4  # unconditional, audio only, surprised, sad
    assert call["drop_audio"].tolist() == [True, False, False, False]
    assert call["drop_emotion"].tolist() == [True, True, False, False]
    assert call["expert"].tolist() == [5, 5, 5, 4]  # surprised (the main emotion), then sad
    assert call["weights"] is None
    surprised, sad = spy.modules_run["label"]  # each a basic label at the compound's intensity
    torch.testing.assert_close(surprised, torch.tensor([[0, 0, 0, 0, 0, 0.5]]))
    torch.testing.assert_close(sad, torch.tensor([[0, 0, 0, 0, 0.5, 0]]))
    assert spy.experts_run == {4, 5}


def test_composed_compound_with_no_adverb_weight_samples_its_main_emotion(net):
    """λ = (1, 0) leaves ε_u + a (ε_a − ε_u) + e (ε_surprised − ε_a): the basic label's video."""
    settings = dict(steps=2, audio_guidance=2.0, emotion_guidance=3.0)
    composed = run(make_pipeline(net, compose_compounds=0.0, **settings), "sadly surprised@0.7",
                   0.3)
    main = run(make_pipeline(net, **settings), "surprised@0.7", 0.3)
    assert np.abs(composed.astype(int) - main.astype(int)).max() <= 1
    adverb = run(make_pipeline(net, compose_compounds=1.0, **settings), "sadly surprised@0.7",
                 0.3)
    assert not np.array_equal(adverb, composed)


def test_regional_compound_guides_each_face_region_by_its_parts(net, monkeypatch):
    """compound_regions: sadly surprised is guided by sad above the split row and by surprised
    below it, at compose_compounds times its region weights; a compound without an AU
    prototype of its own samples as it does composed over the whole face."""
    weights = []
    combine = Guidance.combine
    monkeypatch.setattr(Guidance, "combine",
                        lambda self, p, w=None: weights.append(w) or combine(self, p, w))
    settings = dict(steps=2, audio_guidance=2.0, emotion_guidance=3.0, compose_compounds=2.0)
    regional = run(make_pipeline(net, compound_regions=0.5, **settings), "sadly surprised", 0.16)
    surprised, sad = weights[0][:, 0, 0, 0, :, 0]  # (parts, rows) of the one video
    assert surprised[0] == pytest.approx(0, abs=1e-3) and sad[-1] == pytest.approx(0, abs=1e-3)
    assert surprised[-1] == pytest.approx(2 * 0.8658, abs=1e-3)  # surprise's open mouth
    assert sad[0] == pytest.approx(2 * 1.047, abs=1e-3)  # sad's raised inner brows
    whole = run(make_pipeline(net, **settings), "sadly surprised", 0.16)
    assert not np.array_equal(regional, whole)
    no_prototype = [run(make_pipeline(net, **settings, **extra), "happily sad", 0.16)
                    for extra in ({"compound_regions": 0.5}, {})]
    assert np.abs(no_prototype[0].astype(int) - no_prototype[1].astype(int)).max() <= 1
    with pytest.raises(InputError, match="set compose_compounds too"):
        make_pipeline(net, compound_regions=0.5)
    with pytest.raises(InputError, match=r"compound_regions must be in \(0, 1\)"):
        make_pipeline(net, compose_compounds=2.0, compound_regions=0.0)


def test_intensity_guidance_scales_the_emotion_term_by_the_intensity(net, spy):
    """happy@0.25 with intensity_guidance is ε_u + a (ε_a − ε_u) + e · 0.25 (ε_full − ε_a):
    the plain sampler's video at emotion scale e / 4; at @1 the plain sampler's own video,
    through its two branches when the scales are equal."""
    equal = make_pipeline(net, audio_guidance=3.0, emotion_guidance=3.0, intensity_guidance=True)
    run(equal, "happy@0.5", 0.16)
    run(equal, "happy", 0.16)
    assert [call["batch"] for call in spy.calls] == [3, 2]  # the audio-only branch when weak
    settings = dict(steps=2, audio_guidance=2.0)
    weighted = make_pipeline(net, emotion_guidance=3.0, intensity_guidance=True, **settings)
    quarter = run(weighted, "happy@0.25", 0.16)
    scaled = run(make_pipeline(net, emotion_guidance=0.75, **settings), "happy@0.25", 0.16)
    assert np.abs(quarter.astype(int) - scaled.astype(int)).max() <= 1
    plain = make_pipeline(net, emotion_guidance=3.0, **settings)
    assert not np.array_equal(quarter, run(plain, "happy@0.25", 0.16))
    full = run(weighted, "happy", 0.16)
    assert np.abs(full.astype(int) - run(plain, "happy", 0.16).astype(int)).max() <= 1


def test_composed_compounds_sample_apart_from_other_conditions(net):
    pipeline = make_pipeline(net, compose_compounds=1.0)
    with pytest.raises(ValueError, match="composed compounds or none"):
        pipeline.generate_many(torch.zeros(3, SIZE, SIZE), [speech(0.2)] * 2,
                               [EmotionTrack.parse("happily surprised"),
                                EmotionTrack.parse("happy")])


def test_conditions_that_name_no_emotion_use_the_learned_gates(net, spy):
    moe = next(m for m in net.denoiser.modules() if isinstance(m, EmotionMoE))
    spy.watch("global_gate", moe.global_gate)
    run(make_pipeline(net), "text:a broad smile", 0.16)
    assert spy.moe == [(None, None)]
    assert len(spy.modules_run["global_gate"]) == 1


@pytest.mark.parametrize("spec", ["sad@0.4", "neutral", "AU6:0.8,AU12:1", "text:a faint smile"])
def test_condition_reaches_its_encoder(net, spy, spec):
    queries = net.emotion_to_latents.to_queries
    spy.watch("label", queries["label"])
    spy.watch("au", queries["au"])
    spy.watch("text", net.emotion_to_latents.text_encoder)
    run(make_pipeline(net), spec, 0.16)
    condition = parse_emotion(spec)
    seen = spy.modules_run
    if condition.kind == "text":
        assert seen["text"] == [["a faint smile"]] and not seen["label"] and not seen["au"]
        return
    if condition.kind == "au":
        torch.testing.assert_close(seen["au"][0], torch.tensor([condition.au_vector()]))
        assert not seen["label"]
    else:  # a label alone, as the experts are trained
        torch.testing.assert_close(seen["label"][0], torch.tensor([condition.label_vector()]))
        assert not seen["au"]
    if spec == "sad@0.4":
        torch.testing.assert_close(seen["label"][0], torch.tensor([[0, 0, 0, 0, 0.4, 0.0]]))


def test_speech_condition_encodes_the_clip_audio(net, spy):
    spy.watch("speech", net.emotion_to_latents.speech_encoder)
    run(make_pipeline(net), "speech", 0.3)  # 8 frames: two clips of 4
    first, second = spy.modules_run["speech"]
    audio = torch.from_numpy(normalize_track(speech(0.3)))  # the track, normalised as a whole
    # each clip's tone is heard over SPEECH_FRAMES (16) frames around it: here all 0.3 s of it
    for heard in (first, second):
        assert heard.shape == (1, SPEECH_FRAMES * 640)
        torch.testing.assert_close(heard[0, : len(audio)], audio)
        assert not heard[0, len(audio) :].any()


@pytest.mark.parametrize("heard", ["fear", "happy"])
def test_heard_speech_runs_the_expert_of_the_emotion_its_recogniser_hears(net, spy, heard):
    """``speech_routing: heard``: every clip's speech latents go through the one expert of the
    basic emotion the speech-emotion classifier hears most in the clip, without gates, as a
    label's do; ``gates`` (the paper) routes the same latents through the learned gates."""
    expert = BASIC_EMOTIONS.index(heard)  # the classifier's classes are BASIC_EMOTIONS
    moe = next(m for m in net.denoiser.modules() if isinstance(m, EmotionMoE))
    spy.watch("global_gate", moe.global_gate)
    pipeline = make_pipeline(net, speech_routing="heard")
    assert pipeline.routing_kind(parse_emotion("speech")) == "expert"
    bias = net.emotion_to_latents.speech_encoder.model.classifier.bias
    with torch.no_grad():
        bias[expert] += 50.0
    try:
        run(pipeline, "speech", 0.3)  # two clips of 4 frames
    finally:
        with torch.no_grad():
            bias[expert] -= 50.0
    assert spy.moe == [(expert, None)] * 2
    assert spy.experts_run == {expert} and not spy.modules_run["global_gate"]
    spy.moe.clear()
    gated = make_pipeline(net)
    assert gated.routing_kind(parse_emotion("speech")) == "gates"
    run(gated, "speech", 0.3)
    assert spy.moe == [(None, None)] * 2 and len(spy.modules_run["global_gate"]) == 2


def test_heard_speech_needs_a_recogniser_of_every_basic_emotion(net):
    """A speech-emotion classifier with fewer classes (SUPERB's IEMOCAP head hears neutral,
    happy, angry and sad) cannot name every expert: ``heard`` is refused in one line."""
    iemocap = torch.zeros(4, 6)
    for row, emotion in ((1, "happy"), (2, "angry"), (3, "sad")):
        iemocap[row, BASIC_EMOTIONS.index(emotion)] = 1.0
    encoder = net.emotion_to_latents.speech_encoder
    every = encoder.class_emotions
    encoder.class_emotions = iemocap
    try:
        with pytest.raises(InputError, match="speech_routing 'gates'") as error:
            make_pipeline(net, speech_routing="heard")
    finally:
        encoder.class_emotions = every
    assert "\n" not in str(error.value)
    make_pipeline(net, speech_routing="gates")
    with pytest.raises(InputError, match="speech_routing must be one of"):
        make_pipeline(net, speech_routing="loudest")


def test_timeline_switches_at_the_right_clip(net, spy):
    # 12 frames in clips of 4; the switch at 0.32 s is frame 8, the start of clip 2
    run(make_pipeline(net, transition=0), "0s:neutral,0.32s:happy", 0.48)
    assert [expert for expert, _ in spy.moe] == [None, None, 3]


def test_timeline_transition_mixes_expert_weights(net, spy):
    pipeline = make_pipeline(net, transition=0.32)
    run(pipeline, "0s:sad,0.32s:happy", 0.48)  # clip centres 0.08, 0.24, 0.40 s
    assert [expert for expert, _ in spy.moe] == [4, None, None]
    share = 0.24 / 0.32 - 1 + 0.5  # happy's share at 0.24 s: a linear ramp centred at 0.32 s
    expected = torch.tensor([0, 0, 0, share, 1 - share, 0])
    torch.testing.assert_close(spy.moe[1][1][0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(spy.moe[2][1][0], torch.tensor([0, 0, 0, 0.75, 0.25, 0]))


@pytest.mark.parametrize("conditions", [("happy", "sad@0.5", "happy"),
                                        ("happy:0.5,sad:0.5", "angry:0.7,fear:0.3"),
                                        ("happily surprised", "sadly fearful"),
                                        ("text:a broad smile", "AU6:0.8,AU12:1"),
                                        ("speech", "sad", "speech")])
@pytest.mark.parametrize("compose", [None, 1.5])
@pytest.mark.parametrize("intensity", [False, True])
def test_videos_sampled_together_equal_each_sampled_alone(net, conditions, compose, intensity):
    """generate_many: one batched network call per step, each video from its own noise, the
    same frames (to float tolerance) as one generate call per video; guidance on, 2 clips;
    with intensity_guidance, a full-intensity video batched with a weaker one too; speech
    routed as heard (each video's own expert) beside a label."""
    pipeline = make_pipeline(net, steps=2, audio_guidance=2.0, emotion_guidance=3.0,
                             compose_compounds=compose, intensity_guidance=intensity,
                             speech_routing="heard")
    reference = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    audios = [speech(0.3) * (1 + i) for i in range(len(conditions))]
    tracks = [EmotionTrack.parse(c) for c in conditions]
    seeds = [torch.Generator().manual_seed(i) for i in range(len(tracks))]
    together = pipeline.generate_many(reference, audios, tracks, seeds)
    for i, (audio, track) in enumerate(zip(audios, tracks)):
        alone = pipeline.generate(reference, audio, track, torch.Generator().manual_seed(i))
        assert together[i].shape == alone.shape
        assert np.abs(together[i].astype(int) - alone.astype(int)).max() <= 1
    assert not np.array_equal(together[0], together[-1])


def test_videos_sampled_together_must_be_routed_alike_and_of_one_length(net):
    pipeline = make_pipeline(net)
    reference = torch.zeros(3, SIZE, SIZE)
    with pytest.raises(ValueError, match="routed alike"):
        pipeline.generate_many(reference, [speech(0.2)] * 2,
                               [EmotionTrack.parse("happy"), EmotionTrack.parse("text:a smile")])
    with pytest.raises(ValueError, match="one length"):
        pipeline.generate_many(reference, [speech(0.2), speech(0.3)],
                               [EmotionTrack.parse("happy")] * 2)


def test_emotion_onset_starts_the_video_without_the_emotion_term(net, spy):
    """emotion_onset 0.04 s (one frame at 25 fps): the first frame is ε_u + a (ε_a − ε_u), the
    video sampled without the emotion term, and the next frames the plain sampler's; only the
    first clip runs the audio-only branch (3 branches, then the equal scales' 2)."""
    settings = dict(audio_guidance=3.0, emotion_guidance=3.0)
    onset = run(make_pipeline(net, emotion_onset=0.04, **settings), "happy", 0.32)
    assert [call["batch"] for call in spy.calls] == [3, 2]
    without = run(make_pipeline(net, audio_guidance=3.0, emotion_guidance=0.0), "happy", 0.32)
    plain = run(make_pipeline(net, **settings), "happy", 0.32)
    assert np.abs(onset[0].astype(int) - without[0].astype(int)).max() <= 1
    assert np.abs(onset[1:4].astype(int) - plain[1:4].astype(int)).max() <= 1
    assert np.abs(onset[0].astype(int) - plain[0].astype(int)).max() > 1
    with pytest.raises(InputError, match="emotion_onset must be ≥ 0"):
        make_pipeline(net, emotion_onset=-0.1)


@pytest.mark.parametrize("spec, extra", [("happily surprised", {"compose_compounds": 2.0}),
                                         ("happy@0.5", {"intensity_guidance": True})])
def test_emotion_onset_also_weighs_composed_and_weaker_emotions(net, spec, extra):
    """With a one-frame onset a composed compound's parts and an intensity-weighted emotion
    start without their emotion terms too, and frames 1-3 are the sampler's without onset."""
    scales = dict(audio_guidance=3.0, **extra)
    onset = run(make_pipeline(net, emotion_onset=0.04, emotion_guidance=3.0, **scales), spec, 0.32)
    without = run(make_pipeline(net, emotion_guidance=0.0, **scales), spec, 0.32)
    full = run(make_pipeline(net, emotion_guidance=3.0, **scales), spec, 0.32)
    assert np.abs(onset[0].astype(int) - without[0].astype(int)).max() <= 1
    assert np.abs(onset[1:4].astype(int) - full[1:4].astype(int)).max() <= 1
    assert np.abs(onset[0].astype(int) - full[0].astype(int)).max() > 1


def stage_exports(net: MoEENet, folder: Path) -> Callable[..., MoEEPipeline]:
    """``net``'s weights split as the stages export them (the backbone and experts, the
    gates, the Emotion-to-Latents modality paths); returns a builder of a 1-step pipeline
    from the named parts (and sampler settings)."""
    from safetensors.torch import save_file

    from moee.models.moee_net import EMOTION_ENCODERS, parameter_group

    groups = {name: parameter_group(name, stand_ins=tuple(EMOTION_ENCODERS))
              for name, _ in net.named_parameters()}
    parts = {"gates": {"gates"}, "modalities": {"emotion_modalities"}}
    parts["backbone_and_experts"] = set(groups.values()) - {"gates", "emotion_modalities"}
    exports = {}
    for part, kept in parts.items():
        exports[part] = str(folder / f"{part}.safetensors")
        save_file({k: v for k, v in net.state_dict().items() if groups.get(k) in kept},
                  exports[part])

    def pipeline(*loaded: str, **settings) -> MoEEPipeline:
        return MoEEPipeline.from_weights(
            net.config, [exports[p] for p in loaded],
            settings=SamplerSettings(steps=1, clip_frames=4, **settings), progress=False)
    return pipeline


def refused(pipe: MoEEPipeline, spec: str, need: str) -> None:
    """``spec`` is refused in one line that names ``need`` and the gating export."""
    with pytest.raises(InputError, match=need) as error:
        run(pipe, spec, 0.16)
    assert "gating.safetensors" in str(error.value) and "\n" not in str(error.value)


def test_emotions_the_loaded_weights_cannot_serve_are_one_line(tmp_path):
    """A backbone and its experts animate basic and compound labels; what routes through the
    learned gates, or reads AUs, a text or the speech, is refused in one line before sampling
    until the gating stage's gates and modality paths are loaded too."""
    torch.manual_seed(0)
    pipeline = stage_exports(MoEENet(), tmp_path)
    experts_only = pipeline("backbone_and_experts")
    for spec in ("happy", "happily surprised@0.5"):
        assert run(experts_only, spec, 0.16).shape == (4, SIZE, SIZE, 3)
    for spec in ("neutral", "happy:0.5,sad:0.5", "0s:happy,0.1s:sad", "text:a wide smile",
                 "speech", "AU12:1"):
        refused(experts_only, spec, "needs the learned gates")
    gated = pipeline("backbone_and_experts", "gates")
    for spec in ("neutral", "happy:0.5,sad:0.5", "0s:happy,0.1s:sad"):
        assert run(gated, spec, 0.16).shape == (4, SIZE, SIZE, 3)
    for spec, path in (("text:a wide smile", "text:"), ("speech", "speech"), ("AU12:1", "AUs")):
        refused(gated, spec, f"needs the {path} path of Emotion-to-Latents")
    whole = pipeline("backbone_and_experts", "gates", "modalities")
    for spec in ("text:a wide smile", "speech", "AU12:1"):
        assert run(whole, spec, 0.16).shape == (4, SIZE, SIZE, 3)


def test_one_attention_needs_no_gates(tmp_path):
    """The w/o MoE network (``num_experts: 1``) has no gates: every condition animates once
    its modality paths are loaded, whatever routing it would take among six experts (speech
    routed as heard or through the gates alike); only the modality paths are still needed."""
    torch.manual_seed(0)
    net = MoEENet(replace(MoEENetConfig(), num_experts=1))
    assert not any("_gate." in name for name, _ in net.named_parameters())
    pipeline = stage_exports(net, tmp_path)
    experts_only = pipeline("backbone_and_experts")
    for spec in ("neutral", "happy:0.5,sad:0.5", "0s:happy,0.1s:sad"):
        assert run(experts_only, spec, 0.16).shape == (4, SIZE, SIZE, 3)
    refused(experts_only, "speech", "needs the speech path of Emotion-to-Latents")
    for routing in ("gates", "heard"):
        whole = pipeline("backbone_and_experts", "modalities", speech_routing=routing)
        for spec in ("text:a wide smile", "speech", "AU12:1"):
            assert run(whole, spec, 0.16).shape == (4, SIZE, SIZE, 3)
