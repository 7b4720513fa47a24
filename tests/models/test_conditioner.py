"""The conditioner: training batches and the pipeline's inputs become the same Conditions;
gradients flow only into the encoders a stage trains; drops follow their rates and the stage's
own."""

from __future__ import annotations

import pytest
import torch

from moee.data.batch import normalize_images
from moee.models.conditioner import CONDITIONS, ConditionDropout, Conditioner
from tests.clips import make_batch, make_test_clip


@pytest.fixture(scope="module")
def batch():
    clips = [make_test_clip(identity=f"id{i}", emotion=e, num_frames=12, size=64, seed=i)
             for i, e in enumerate(("happy", "sad"))]
    return normalize_images(make_batch(clips, num_frames=4))


@torch.no_grad()
def test_a_batch_and_the_pipeline_inputs_give_the_same_conditions(tiny_net, batch):
    """Training (``from_batch``) and sampling (``encode``) are one path: the batch's keys are
    the pipeline's arguments."""
    conditioner = Conditioner(tiny_net)
    trained = conditioner.from_batch(batch, dropout=False, expert=3)
    motion = tiny_net.encode_frames(batch["motion_frames"])
    sampled = conditioner.encode(batch["reference"], motion, audio=batch["audio"],
                                 emotion=batch["emotion"], expert=3)
    for name, value in trained.reference.features.items():
        torch.testing.assert_close(value, sampled.reference.features[name])
    torch.testing.assert_close(trained.audio, sampled.audio)
    torch.testing.assert_close(trained.emotion, sampled.emotion)
    assert trained.expert == 3 and trained.drop_emotion is None
    assert trained.audio.shape[:2] == (2, 4)
    stills = conditioner.from_batch(batch, dropout=False, pick=torch.tensor([0, 3]))
    torch.testing.assert_close(stills.audio[:, 0], sampled.audio[[0, 1], [0, 3]])
    assert conditioner.from_batch(batch, dropout=False, audio=False, emotion=False).audio is None


def test_gradients_flow_only_into_the_trained_encoders(tiny_net, batch):
    for groups, grads in (((), set()), (("audio",), {"audio"}),
                          (("reference", "emotion_modalities"), {"reference", "emotion"})):
        conditions = Conditioner(tiny_net, trained_groups=groups).from_batch(batch, dropout=False)
        tracked = {"reference": next(iter(conditions.reference.features.values())).requires_grad,
                   "audio": conditions.audio.requires_grad,
                   "emotion": conditions.emotion.requires_grad}
        assert {name for name, on in tracked.items() if on} == grads, groups


@torch.no_grad()
def test_drops_follow_their_rates_and_keep_the_stage_s_own(tiny_net, batch):
    never = Conditioner(tiny_net, ConditionDropout(0.0, 0.0, 0.0))
    always = Conditioner(tiny_net, ConditionDropout(1.0, 1.0, 1.0))
    for name in CONDITIONS:
        assert not getattr(never.from_batch(batch), f"drop_{name}").any()
        assert getattr(always.from_batch(batch), f"drop_{name}").all()
    own = torch.tensor([True, False])
    kept = never.from_batch(batch, dropped={"emotion": own})
    assert kept.drop_emotion.tolist() == [True, False]
    assert never.from_batch(batch, dropout=False, dropped={"emotion": own}).drop_emotion is own


@torch.no_grad()
def test_repeated_and_selected_conditions_round_trip(tiny_net, batch):
    conditions = Conditioner(tiny_net).from_batch(batch, expert=torch.tensor([3, 4]))
    twice = conditions.repeat(2)
    assert twice.audio.shape[0] == 4 and twice.expert.tolist() == [3, 4, 3, 4]
    second = twice.select(slice(3, 4))
    torch.testing.assert_close(second.emotion, conditions.emotion[1:])
    torch.testing.assert_close(second.reference.image_embeds,
                               conditions.reference.image_embeds[1:])
    assert second.drop_audio.tolist() == conditions.drop_audio[1:].tolist()
