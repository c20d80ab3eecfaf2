"""IA3 on GPT-2's Conv1D layers: the math, forward, backward and merge.

(IA)³, "Infused Adapter by Inhibiting and Amplifying Inner Activations" (Liu et al.
2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", arXiv:2205.05638), freezes the model and learns one vector l per adapted
layer that rescales activations elementwise. A linear layer h = x W + b adapts in one
of two ways:

    h = (x W + b) ⊙ l        output scaling, l (out,): saved (out, 1) as peft
    h = (x ⊙ l) W + b        input scaling ("feedforward" module), l (in,): saved (1, in)

l starts at ones (init_ia3_weights=True), so training starts exactly at the base
model. Output scaling multiplies the bias too. The paper rescales the keys, the values
and the feed-forward's inner activation:

    k = l_k ⊙ (x W_k + b_k),   v = l_v ⊙ (x W_v + b_v),   FFN(x) = (l_ff ⊙ γ(x W_1)) W_2

peft's GPT-2 default scales the whole fused c_attn output (q, k and v: l (3C,)) and
the input of mlp.c_proj (l_ff (4C,)); minipeft's ``c_attn_slices=["k", "v"]`` gives
the paper's placement, q left unscaled (IA3Config.paper()).

Backward, u the tensor l multiplies (h before scaling, or the layer's input x):

    y = u ⊙ l   ->   du = dy ⊙ l,   dl = Σ_n dy ⊙ u     (sum over the N = B·T rows)

Both forms fold into W (Conv1D layout, W (in, out)), as peft's merge:

    output:  W' = W ⊙ l[None, :],  b' = b ⊙ l     (scale W's output columns, and b)
    input:   W' = W ⊙ l[:, None],  b' = b         (scale W's input rows)

Trainable parameters per adapted layer: `out` (output scaling) or `in` (input
scaling); per c_attn slice, C. Every function here is the plain NumPy twin of a
Numba kernel in ``minipeft.kernels.ia3``; the tests hold the two equal.
"""
from __future__ import annotations

import numpy as np


def ia3_forward(u, l):
    """u (N, n) ⊙ l (n,) -> (y (N, n), cache u)."""
    return u * l, u


def ia3_backward(dy, u, l):
    """dy (N, n) -> (du (N, n), dl (n,)), for y = u ⊙ l."""
    du = dy * l                                        # (N, n)
    dl = np.einsum("nk,nk->k", dy, u)                  # (n,)  Σ over the rows
    return du, dl


def merge_weight(W, b, l, feedforward):
    """Fold l into a Conv1D layer: -> (W' (in, out), b' (out,)), new arrays.
    Input scaling (feedforward) scales W's rows; output scaling its columns and b."""
    if feedforward:
        return W * l[:, None], b.copy()                # (x ⊙ l) W = x (l[:, None] ⊙ W)
    return W * l[None, :], b * l                       # (x W + b) ⊙ l


def unmerge_weight(W, b, l, feedforward):
    """Inverse of merge_weight: divide l back out (exact division; every l must be ≠ 0)."""
    if feedforward:
        return W / l[:, None], b.copy()
    return W / l[None, :], b / l
