"""Emotion Mixture of Experts (paper eq. 2-4).

For hidden states ``X`` (b n d) and emotion latents ``C`` (b m c), with ``e`` experts::

    s  = sigmoid(local_gate(X))                                  local gate, per token  (b n e)
    g  = softmax(global_gate(mean_n X) + context_gate(mean_m C))  global gate, per sample (b e)
    X' = X + sum_i g_i * E_i(X * s_i, C)   E_i: cross-attention, queries from X, keys/values from C

``context_gate`` is MoEE's one addition to the paper's eq. 3: the hidden states entering the
first MoE layer carry no emotion at all (the emotion enters the network only here), so a gate
that reads X alone cannot tell "happily surprised" from "sadly fearful" there. It starts at
zero, where eq. 3 holds exactly, and learns in the gating stage with the other gates.

Two implementations share the same parameters (the experts' own ``nn.Linear`` layers):

* the *loop* path runs ``experts[i]`` one after another;
* the *fused* path runs all experts at once, in whichever of two exact forms costs fewer
  multiply-adds for the shapes at hand (:func:`absorbed_is_cheaper`):

  - *batched*: stack the experts' weights, project all queries with one matmul, fold the expert
    axis into the batch for a single ``F.scaled_dot_product_attention`` call and mix the outputs
    with one gate-weighted matmul;
  - *absorbed*: with few emotion tokens ``m``, fold each head's query projection into its keys
    (``q k^T = X (W_q^T k^T)``) and its output projection and global gate into its values
    (``g_i P v W_o^T``), so that the whole mixture is two matmuls of X against ``e*h*m``
    columns instead of four against ``e*d`` (2x-5x fewer operations at SD-1.5's wide levels).

  Both rely on the query projection having no bias, so that ``(X * s_i) W_q = s_i * (X W_q)``
  exactly (``s_i`` is one scalar per token).

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

SHORT_SOFTMAX = 16
"""Emotion-token counts below this take the absorbed form's (m e h) column order."""


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
        global_gate: learn the global gate ω (and its emotion term ``context_gate``);
            ``False`` (ablation) mixes the experts with equal weights: ``global_gate`` is then a
            parameter-free :class:`UniformGate` and ``context_gate`` is ``None``.

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
        self.global_gate = self.context_gate = None
        if num_experts > 1 and global_gate:
            self.global_gate = nn.Linear(dim, num_experts)
            self.context_gate = nn.Linear(context_dim, num_experts)
            nn.init.zeros_(self.context_gate.weight)
            nn.init.zeros_(self.context_gate.bias)
        elif num_experts > 1:
            self.global_gate = UniformGate(num_experts)
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

    @torch.no_grad()
    def route_by_prototypes(self, prototypes: torch.Tensor, margin: float) -> None:
        """Start the global gate's emotion term as a nearest-prototype router.

        ``prototypes`` (e c) are the token-mean emotion latents of each expert's own basic
        label. ``context_gate`` is set so that its logits are ``-s |mean_m C - P_i|^2`` up to a
        constant per sample (which the softmax ignores), with ``s`` chosen so that a condition
        sitting on a prototype prefers its expert by at least ``margin`` logits over the
        nearest other one. Any modality whose latents land near a label's is then routed to
        that label's expert before the gate has trained at all; the learnt linear gate of a
        short stage cannot find this itself, as the labels' mean latents share most of their
        norm (6.6 on the tiny model) and differ by only ~1.
        """
        if self.context_gate is None:
            raise ValueError("prototype routing needs the learned global gate (global_gate=True)")
        if margin <= 0:
            raise ValueError(f"prototype_margin must be positive (logits by which a label "
                             f"prefers its own expert), got {margin}")
        if prototypes.shape != (self.num_experts, self.sizes["context_dim"]):
            raise ValueError(f"expected ({self.num_experts}, {self.sizes['context_dim']}) "
                             f"prototypes, got {tuple(prototypes.shape)}")
        distances = torch.cdist(prototypes, prototypes).square()
        nearest = distances.masked_fill(torch.eye(self.num_experts, dtype=torch.bool,
                                                  device=distances.device), torch.inf).min()
        scale = margin / nearest.clamp_min(1e-6)
        squared = prototypes.square().sum(1)
        self.context_gate.weight.copy_(2 * scale * (prototypes - prototypes.mean(0)))
        self.context_gate.bias.copy_(-scale * (squared - squared.mean()))

    def gates(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local gate s (b n e) and global gate g (b e) of eq. 2-3, for x (b n d) and one
        context (b m c) per row, or (b/r m c) shared by each run of ``r`` rows (as in
        :meth:`forward`)."""
        logits = self.global_gate(x.mean(1))
        if self.context_gate is not None:
            rows = x.shape[0] // context.shape[0]
            logits = logits + self.context_gate(context.mean(1)).repeat_interleave(rows, 0)
        return torch.sigmoid(self.local_gate(x)), torch.softmax(logits, -1)

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
            context: emotion latents (b m c), or (b/r m c) shared by each run of ``r``
                consecutive rows of ``x`` (the frames of one clip): the fused path then
                prepares each context once instead of once per frame.
            expert: an int ``i`` or a per-sample LongTensor (b,): single-expert path
                ``x + experts[i](x, context)``; or per-sample expert shares, a float tensor
                (b e): ``x + sum_i w_i experts[i](x, context)``. Only the chosen experts run
                (no gates): how the experts train, one emotion each or a compound's
                components together.
            weights: (b e) explicit mixture replacing the global gate ``g``.

        Returns:
            (b n d)
        """
        if x.shape[0] % context.shape[0]:
            raise ValueError(f"{context.shape[0]} emotion contexts cannot be shared by "
                             f"{x.shape[0]} rows of hidden states")
        if expert is not None and weights is not None:
            raise ValueError("pass either `expert` or `weights`, not both")
        per_row = context.repeat_interleave(x.shape[0] // context.shape[0], 0)
        if self.num_experts == 1:
            return x + self.experts[0](x, per_row)
        if expert is not None:
            return x + self._single(x, per_row, expert)
        local, global_ = self.gates(x, per_row)
        if weights is not None:
            global_ = weights.to(x.dtype)
        if not self.fused:
            return x + self._mix_loop(x, per_row, local, global_)
        return x + self._mix_fused(x, context, local, global_)

    def _single(self, x: torch.Tensor, context: torch.Tensor, expert: int | torch.Tensor):
        if isinstance(expert, int):
            return self.experts[expert](x, context)
        if torch.compiler.is_compiling():  # no data-dependent shapes: every expert, fused
            shares = expert if expert.is_floating_point() else \
                F.one_hot(expert, self.num_experts)
            return self._mix_fused(x, context, x.new_ones(x.shape[0], 1, self.num_experts),
                                   shares.to(x.dtype))
        if expert.is_floating_point():
            return self._shared(x, context, expert)
        if expert.numel() == 1 or bool((expert == expert[0]).all()):
            return self.experts[int(expert[0])](x, context)
        out = torch.empty_like(x)
        for i in expert.unique().tolist():
            rows = (expert == i).nonzero().squeeze(1)
            out = out.index_copy(0, rows, self.experts[i](x[rows], context[rows]))
        return out

    def _shared(self, x: torch.Tensor, context: torch.Tensor, shares: torch.Tensor):
        # x (b n d), shares (b e) -> sum_i w_i E_i(x, C), each expert on its rows only: (b n d)
        if shares.shape != (x.shape[0], self.num_experts):
            raise ValueError(f"expected expert shares of shape ({x.shape[0]}, "
                             f"{self.num_experts}), got {tuple(shares.shape)}")
        out = torch.zeros_like(x)
        for i in (shares != 0).any(0).nonzero().flatten().tolist():
            rows = (shares[:, i] != 0).nonzero().squeeze(1)
            branch = self.experts[i](x[rows], context[rows])
            out = out.index_add(0, rows, shares[rows, i, None, None].to(x.dtype) * branch)
        return out

    def _mix_loop(self, x, context, local, global_):
        # x (b n d), local (b n e), global_ (b e) -> sum_i g_i E_i(x * s_i, C): (b n d)
        return sum(
            global_[:, i, None, None] * expert(x * local[..., i, None], context)
            for i, expert in enumerate(self.experts)
        )

    def _mix_fused(self, x, context, local, global_):
        rows = x.shape[0] // context.shape[0]
        if absorbed_is_cheaper(x.shape[1], context.shape[1], self.sizes["dim"], self.heads,
                               self.sizes["dim_head"], rows):
            return self._mix_absorbed(x, context, local, global_)
        return self._mix_batched(x, context.repeat_interleave(rows, 0), local, global_)

    def _mix_absorbed(self, x, context, local, global_):
        # context (b/r m c) is shared by r consecutive rows of x: keys and values once per context
        (b, n, d), (b_c, m) = x.shape, context.shape[:2]
        e, h, dh = self.num_experts, self.heads, self.sizes["dim_head"]
        w_q = torch.stack([ex.to_q.weight for ex in self.experts]).view(e, h, dh, d)
        w_k = torch.cat([ex.to_k.weight for ex in self.experts])  # (e h k) c
        w_v = torch.cat([ex.to_v.weight for ex in self.experts])  # (e h k) c
        w_o = torch.stack([ex.to_out.weight for ex in self.experts]).view(e, d, h, dh)
        b_o = torch.stack([ex.to_out.bias for ex in self.experts])  # e d
        keys, values = ((context @ w.T).view(b_c, m, e, h, dh) for w in (w_k, w_v))
        # The softmax runs over m. With few emotion tokens the columns are ordered (m e h), so
        # that it runs along a strided axis with e*h contiguous lanes: several times faster on
        # CPUs than over rows of 8; with longer rows, (e h m) and the last axis are faster.
        tokens_first = m < SHORT_SOFTMAX
        order = "meh" if tokens_first else "ehm"
        keys = torch.einsum(f"ehkd,bmehk->bd{order}", w_q, keys * dh**-0.5).reshape(b_c, d, -1)
        values = torch.einsum(f"bmehk,edhk->b{order}d", values, w_o).reshape(b_c, -1, d)
        scores = x.reshape(b_c, -1, d) @ keys
        if tokens_first:
            scores = scores.view(b, n, m, e, h) * local[:, :, None, :, None]
            probs = scores.softmax(2) * global_[:, None, None, :, None]
        else:
            scores = scores.view(b, n, e, h, m) * local[..., None, None]
            probs = scores.softmax(-1) * global_[:, None, :, None, None]
        return (probs.view(b_c, -1, m * e * h) @ values).view(b, n, d) + (global_ @ b_o)[:, None]

    def _mix_batched(self, x, context, local, global_):
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


def absorbed_is_cheaper(tokens: int, context_tokens: int, dim: int, heads: int,
                        dim_head: int, rows_per_context: int = 1) -> bool:
    """Whether the absorbed form of the fused mixture needs fewer multiply-adds per expert and
    row of hidden states.

    Batched: queries, scores, weighted values, output (``n d hk + 2 n m hk + n hk d``).
    Absorbed: folding W_q into the keys and W_o into the values once per context, shared by
    ``rows_per_context`` rows (``2 m hk d / r``), then scores and outputs against ``h m``
    columns (``2 n d h m``).
    """
    n, m, inner = tokens, context_tokens, heads * dim_head
    batched = 2 * n * dim * inner + 2 * n * m * inner
    absorbed = 2 * m * inner * dim / rows_per_context + 2 * n * dim * heads * m
    return absorbed < batched
