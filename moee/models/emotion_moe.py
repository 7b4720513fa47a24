"""Emotion Mixture of Experts (paper eq. 2-4).

For hidden states ``X`` (b n d) and emotion latents ``C`` (b m c), with ``e`` experts::

    s  = sigmoid(local_gate(X))            local gate, per token     (b n e)
    g  = softmax(global_gate(mean_n X))    global gate, per sample   (b e)
    X' = X + sum_i g_i * E_i(X * s_i, C)   E_i: cross-attention, queries from X, keys/values from C

Two implementations share the same parameters (the experts' own ``nn.Linear`` layers):

* the *loop* path runs ``experts[i]`` one after another;
* the *fused* path stacks the experts' weights, projects all queries with one matmul, folds the
  expert axis into the batch for a single ``F.scaled_dot_product_attention`` call and mixes the
  outputs with one gate-weighted matmul. It relies on the query projection having no bias, so
  that ``(X * s_i) W_q = s_i * (X W_q)`` exactly (``s_i`` is one scalar per token).

A checkpoint is therefore identical whichever path runs; ``fused`` is only an attribute.

Two ablations of the paper's Table 5 are switches of the constructor: ``global_gate=False``
replaces ``G(., ω)`` by equal weights ``g_i = 1/e`` (local gates only), and ``num_experts=1``
is a single cross-attention on the emotion latents with no gates at all (no MoE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from moee.emotions import NUM_EXPERTS


class CrossAttentionExpert(nn.Module):
    """One expert ``E_i(x, C)``: multi-head cross-attention, queries from ``x``, keys/values from C.

    Returns the branch only (shaped like ``x``), without the residual.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (b n d), context (b m c) -> (b n d)."""
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (rearrange(t, "b n (h k) -> b h n k", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n k -> b n (h k)"))


class UniformGate(nn.Module):
    """A parameter-free global gate: equal logits, so ``g = softmax(0) = 1/e`` for every sample."""

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b d) -> zero logits (b e)."""
        return x.new_zeros(*x.shape[:-1], self.num_experts)


class EmotionMoE(nn.Module):
    """Mixture of emotion experts with a per-token local gate and a per-sample global gate.

    Args:
        dim: width ``d`` of the hidden states.
        context_dim: width ``c`` of the emotion latents.
        num_experts: number of experts ``e`` (one per basic emotion, in ``BASIC_EMOTIONS`` order).
        heads: attention heads of each expert.
        dim_head: width of one head (default ``dim // heads``).
        fused: run all experts as one batched computation (same parameters, same result).
        zero_init_output: zero the experts' output projections so that inserting the module
            into a pretrained backbone starts as the identity. The gates then receive no gradient
            until the experts' outputs move away from zero; set ``False`` for a random start.
        global_gate: learn the global gate ω; ``False`` (ablation) mixes the experts with equal
            weights: ``global_gate`` is then a parameter-free :class:`UniformGate`.

    With ``num_experts=1`` (ablation "w/o MoE") the module is one cross-attention,
    ``X' = X + E_0(X, C)``: ``local_gate`` and ``global_gate`` are ``None`` and the routing
    arguments ``expert`` and ``weights`` of :meth:`forward` are ignored.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_experts: int = NUM_EXPERTS,
        heads: int = 8,
        dim_head: int | None = None,
        fused: bool = True,
        zero_init_output: bool = True,
        global_gate: bool = True,
    ) -> None:
        super().__init__()
        dim_head = dim_head or dim // heads
        self.num_experts = num_experts
        self.heads = heads
        self.fused = fused
        self.sizes = {"dim": dim, "context_dim": context_dim, "dim_head": dim_head}
        self.zero_init_output = zero_init_output
        self.experts = nn.ModuleList(
            CrossAttentionExpert(dim, context_dim, heads, dim_head) for _ in range(num_experts)
        )
        self.local_gate = nn.Linear(dim, num_experts) if num_experts > 1 else None
        if num_experts == 1:
            self.global_gate = None
        else:
            self.global_gate = nn.Linear(dim, num_experts) if global_gate else UniformGate(
                num_experts)
        if zero_init_output:
            for expert in self.experts:
                nn.init.zeros_(expert.to_out.weight)
                nn.init.zeros_(expert.to_out.bias)

    def ablated(self, num_experts: int, global_gate: bool) -> EmotionMoE:
        """A new EmotionMoE of the same sizes, heads and init with the ablation switches set."""
        return EmotionMoE(
            num_experts=num_experts, heads=self.heads, fused=self.fused,
            zero_init_output=self.zero_init_output, global_gate=global_gate, **self.sizes,
        )

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local gate s (b n e) and global gate g (b e) of eq. 2-3."""
        return torch.sigmoid(self.local_gate(x)), torch.softmax(self.global_gate(x.mean(1)), -1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        expert: int | torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mix the experts' cross-attention to ``context`` into ``x``.

        Args:
            x: hidden states (b n d).
            context: emotion latents (b m c).
            expert: an int ``i`` or a per-sample LongTensor (b,): single-expert path
                ``x + experts[i](x, context)``; only the chosen experts run (no gates).
            weights: (b e) explicit mixture replacing the global gate ``g``.

        Returns:
            (b n d)
        """
        if self.num_experts == 1:
            return x + self.experts[0](x, context)
        if expert is not None:
            if weights is not None:
                raise ValueError("pass either `expert` or `weights`, not both")
            return x + self._single(x, context, expert)
        local, global_ = self.gates(x)
        if weights is not None:
            global_ = weights.to(x.dtype)
        mix = self._mix_fused if self.fused else self._mix_loop
        return x + mix(x, context, local, global_)

    def _single(self, x: torch.Tensor, context: torch.Tensor, expert: int | torch.Tensor):
        if isinstance(expert, int):
            return self.experts[expert](x, context)
        if expert.numel() == 1 or bool((expert == expert[0]).all()):
            return self.experts[int(expert[0])](x, context)
        out = torch.empty_like(x)
        for i in expert.unique().tolist():
            rows = (expert == i).nonzero().squeeze(1)
            out = out.index_copy(0, rows, self.experts[i](x[rows], context[rows]))
        return out

    def _mix_loop(self, x, context, local, global_):
        # x (b n d), local (b n e), global_ (b e) -> sum_i g_i E_i(x * s_i, C): (b n d)
        return sum(
            global_[:, i, None, None] * expert(x * local[..., i, None], context)
            for i, expert in enumerate(self.experts)
        )

    def _mix_fused(self, x, context, local, global_):
        e, h = self.num_experts, self.heads
        w_q = torch.cat([ex.to_q.weight for ex in self.experts])  # (e k) d
        w_k = torch.cat([ex.to_k.weight for ex in self.experts])  # (e k) c
        w_v = torch.cat([ex.to_v.weight for ex in self.experts])  # (e k) c
        w_o = torch.cat([ex.to_out.weight for ex in self.experts], 1)  # d (e k)
        b_o = torch.stack([ex.to_out.bias for ex in self.experts])  # e d
        q = rearrange(x @ w_q.T, "b n (e h k) -> (e b) h n k", e=e, h=h)
        q = q * rearrange(local, "b n e -> (e b) 1 n 1")
        k, v = (
            rearrange(context @ w.T, "b m (e h k) -> (e b) h m k", e=e, h=h) for w in (w_k, w_v)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # (e b) h n k
        out = out * rearrange(global_, "b e -> (e b) 1 1 1")
        out = rearrange(out, "(e b) h n k -> b n (e h k)", e=e)
        return out @ w_o.T + (global_ @ b_o)[:, None]
