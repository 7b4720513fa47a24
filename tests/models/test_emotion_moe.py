"""EmotionMoE against a hand-written computation of paper eq. 2-4, and fused == loop."""

from __future__ import annotations

import pytest
import torch

from moee.models import emotion_moe
from moee.models.emotion_moe import EmotionMoE, absorbed_is_cheaper

D, C, HEADS, E = 16, 12, 2, 6


def reference_expert(expert, x, context):
    """E_i(x, C) written out: softmax(q k^T / sqrt(d_head)) v per head, then the output layer."""
    b, n, _ = x.shape
    dh = expert.to_q.weight.shape[0] // HEADS
    q = (x @ expert.to_q.weight.T).view(b, n, HEADS, dh).transpose(1, 2)
    k = (context @ expert.to_k.weight.T).view(b, -1, HEADS, dh).transpose(1, 2)
    v = (context @ expert.to_v.weight.T).view(b, -1, HEADS, dh).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, -1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, HEADS * dh)
    return out @ expert.to_out.weight.T + expert.to_out.bias


def reference_moe(moe, x, context, weights=None):
    s = torch.sigmoid(x @ moe.local_gate.weight.T + moe.local_gate.bias)  # b n e
    logits = x.mean(1) @ moe.global_gate.weight.T + moe.global_gate.bias  # eq. 3
    logits = logits + context.mean(1) @ moe.context_gate.weight.T + moe.context_gate.bias
    g = torch.softmax(logits, -1)  # b e
    g = g if weights is None else weights
    out = x.clone()
    for i, expert in enumerate(moe.experts):
        out = out + g[:, i, None, None] * reference_expert(expert, x * s[..., i, None], context)
    return out


@pytest.fixture
def moe():
    torch.manual_seed(0)
    module = EmotionMoE(D, C, heads=HEADS, zero_init_output=False)
    with torch.no_grad():  # the global gate's emotion term, zero at the start, in use
        module.context_gate.weight.normal_(std=0.5)
        module.context_gate.bias.normal_(std=0.5)
    return module


def test_global_gate_starts_as_eq_3_and_learns_to_read_the_emotion(inputs):
    torch.manual_seed(0)
    fresh = EmotionMoE(D, C, heads=HEADS, zero_init_output=False)
    x, context = inputs
    eq3 = torch.softmax(fresh.global_gate(x.mean(1)), -1)
    torch.testing.assert_close(fresh.gates(x, context)[1], eq3)
    with torch.no_grad():
        fresh.context_gate.weight.normal_()
    assert not torch.allclose(fresh.gates(x, context)[1], fresh.gates(x, -context)[1])


def test_prototype_router_sends_each_prototype_to_its_expert_by_the_margin():
    torch.manual_seed(0)
    module = EmotionMoE(D, C, heads=HEADS)
    torch.nn.init.zeros_(module.global_gate.weight)  # the emotion term alone
    torch.nn.init.zeros_(module.global_gate.bias)
    # prototypes with a large common part and small differences, as the tiny model's labels
    prototypes = 6.0 + 0.3 * torch.randn(E, C)
    module.route_by_prototypes(prototypes, margin=4.0)
    x = torch.randn(E, 3, D)
    context = prototypes[:, None].expand(-1, 5, -1)  # mean over tokens = each prototype
    logits = module.gates(x, context)[1].log()
    # reference: softmax(-s |c - P_i|^2), s set by the nearest pair of prototypes
    distances = torch.cdist(prototypes, prototypes).square()
    scale = 4.0 / distances[~torch.eye(E, dtype=torch.bool)].min()
    expected = torch.softmax(-scale * distances, -1)
    torch.testing.assert_close(logits.exp(), expected, rtol=1e-4, atol=1e-5)
    own = logits.diagonal()
    others = logits.masked_fill(torch.eye(E, dtype=torch.bool), -torch.inf).amax(1)
    assert (own - others).min() >= 4.0 - 1e-3
    assert abs((own - others).min() - 4.0) < 1e-3  # the nearest pair is exactly at the margin
    with pytest.raises(ValueError, match="prototypes"):
        module.route_by_prototypes(prototypes[:3], margin=4.0)
    with pytest.raises(ValueError, match="positive"):
        module.route_by_prototypes(prototypes, margin=0.0)
    with pytest.raises(ValueError, match="global gate"):
        EmotionMoE(D, C, heads=HEADS, global_gate=False).route_by_prototypes(prototypes, 4.0)


@pytest.fixture(params=["batched", "absorbed (m e h)", "absorbed (e h m)"])
def fused_form(request, monkeypatch):
    """Force the fused path's form (normally chosen by cost) and the absorbed column order
    (normally chosen by the number of emotion tokens)."""
    absorbed = request.param.startswith("absorbed")
    monkeypatch.setattr(emotion_moe, "absorbed_is_cheaper", lambda *_: absorbed)
    monkeypatch.setattr(emotion_moe, "SHORT_SOFTMAX", 0 if "(e h m)" in request.param else 99)
    return request.param


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 10, D, generator=g), torch.randn(3, 5, C, generator=g)


@pytest.mark.parametrize("fused", [False, True])
def test_soft_mixture_matches_equations(moe, inputs, fused, fused_form):
    moe.fused = fused
    torch.testing.assert_close(moe(*inputs), reference_moe(moe, *inputs))


@pytest.mark.parametrize("fused", [False, True])
def test_user_weights_replace_global_gate(moe, inputs, fused, fused_form):
    moe.fused = fused
    weights = torch.tensor([[0.7, 0, 0, 0.3, 0, 0], [0, 0, 0, 0, 1, 0], [1 / 6] * 6])
    out = moe(*inputs, weights=weights)
    torch.testing.assert_close(out, reference_moe(moe, *inputs, weights))
    assert not torch.allclose(out, moe(*inputs))


def test_single_expert_path(moe, inputs):
    x, context = inputs
    out = moe(x, context, expert=4)
    torch.testing.assert_close(out, x + reference_expert(moe.experts[4], x, context))
    out.square().sum().backward()
    for i, expert in enumerate(moe.experts):
        grads = [p.grad for p in expert.parameters()]
        assert all(g is not None for g in grads) if i == 4 else all(g is None for g in grads)
    assert moe.local_gate.weight.grad is None and moe.global_gate.weight.grad is None


def test_single_expert_per_sample(moe, inputs):
    x, context = inputs
    out = moe(x, context, expert=torch.tensor([1, 5, 1]))
    for row, i in enumerate([1, 5, 1]):
        torch.testing.assert_close(out[row], moe(x[row : row + 1], context[row : row + 1], i)[0])
    out.sum().backward()
    assert moe.experts[0].to_q.weight.grad is None and moe.experts[5].to_q.weight.grad is not None


def test_expert_shares_mix_the_chosen_experts_ungated(moe, inputs):
    x, context = inputs
    shares = torch.tensor([[0, 0, 0, 0.4, 0, 0.6], [0, 1.0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1.0]])
    out = moe(x, context, expert=shares)
    expected = x + torch.stack([sum(w * reference_expert(moe.experts[i], x[r : r + 1],
                                                         context[r : r + 1])[0]
                                    for i, w in enumerate(row.tolist()) if w)
                                for r, row in enumerate(shares)])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[1:], moe(x[1:], context[1:], expert=torch.tensor([1, 5])))
    out.square().sum().backward()
    learnt = [i for i, e in enumerate(moe.experts) if e.to_q.weight.grad is not None]
    assert learnt == [1, 3, 5]
    assert moe.local_gate.weight.grad is None and moe.global_gate.weight.grad is None
    with pytest.raises(ValueError, match="expert shares of shape"):
        moe(x, context, expert=shares[:, :4])


@pytest.mark.parametrize("expert", [torch.tensor([1, 5, 1]), torch.tensor([
    [0, 0, 0, 0.4, 0, 0.6], [0, 1.0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1.0]])], ids=["rows", "shares"])
def test_compiled_routing_has_no_graph_break_and_the_eager_values(moe, inputs, expert):
    """Under torch.compile the per-sample routes run as one fused mixture (no data-dependent
    shapes, which would break the U-Net's graph at every block); the values are the same."""
    x, context = inputs
    compiled = torch.compile(moe, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, context, expert=expert), moe(x, context, expert=expert))


def test_fused_equals_loop_values_and_gradients(moe, inputs, fused_form):
    results = []
    for fused in (False, True):
        moe.zero_grad(set_to_none=True)
        moe.fused = fused
        x = inputs[0].clone().requires_grad_()
        out = moe(x, inputs[1])
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, x.grad, {n: p.grad.clone() for n, p in moe.named_parameters()}))
    (out_l, gx_l, grads_l), (out_f, gx_f, grads_f) = results
    torch.testing.assert_close(out_f, out_l)
    torch.testing.assert_close(gx_f, gx_l)
    for name in grads_l:
        torch.testing.assert_close(grads_f[name], grads_l[name], msg=name)


@pytest.mark.parametrize("fused", [False, True])
def test_context_shared_by_consecutive_rows(moe, fused, fused_form):
    """One context per clip (b/r m c) gives what the context repeated per frame gives."""
    moe.fused = fused
    g = torch.Generator().manual_seed(2)
    x, context = torch.randn(6, 10, D, generator=g), torch.randn(2, 5, C, generator=g)
    per_row = context.repeat_interleave(3, 0)
    torch.testing.assert_close(moe(x, context), moe(x, per_row))
    torch.testing.assert_close(moe(x, context, expert=1), moe(x, per_row, expert=1))
    for shared, repeated in zip(moe.gates(x, context), moe.gates(x, per_row)):
        torch.testing.assert_close(shared, repeated)
    with pytest.raises(ValueError, match="cannot be shared"):
        moe(x, torch.randn(4, 5, C))


def test_absorbed_form_is_chosen_where_it_saves_work():
    # SD-1.5 shapes, 32 emotion tokens, 8 heads: every level absorbs (1.4x-5x fewer operations)
    assert absorbed_is_cheaper(4096, 32, 320, 8, 40)
    assert absorbed_is_cheaper(1024, 32, 640, 8, 80)
    assert absorbed_is_cheaper(256, 32, 1280, 8, 160)
    # many emotion tokens or heads make the absorbed columns (h m) wider than the batched (d)
    assert not absorbed_is_cheaper(256, 512, 1280, 8, 160)
    assert not absorbed_is_cheaper(4096, 32, 320, 16, 20)
    # few tokens: preparing keys and values dominates unless frames share one context
    assert not absorbed_is_cheaper(16, 32, 1280, 8, 160)
    assert absorbed_is_cheaper(16, 32, 1280, 8, 160, rows_per_context=16)


def test_zero_init_starts_as_identity(inputs):
    moe = EmotionMoE(D, C, heads=HEADS)
    x, context = inputs
    torch.testing.assert_close(moe(x, context), x)
    torch.testing.assert_close(moe(x, context, expert=2), x)


def test_expert_and_weights_are_exclusive(moe, inputs):
    with pytest.raises(ValueError, match="either"):
        moe(*inputs, expert=0, weights=torch.ones(3, E) / E)
