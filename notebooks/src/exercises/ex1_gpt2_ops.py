# %% [markdown]
# # Exercises, part 1: GPT-2's ops by hand
#
# Six functions, each the forward or backward of one of GPT-2's ops. Write each one
# where it says `raise NotImplementedError(...)`, run the cell, then run the check below
# it. A check compares your function with minipeft's own op on seeded random inputs in
# float64 and prints `[PASS]`, `[FAIL]` with the error, its threshold and a hint, or
# `[NOT ATTEMPTED]`. Checks never stop the notebook: run all cells whenever you like.
#
# Shapes: `x` is `(..., C)`, a batch of tokens with C channels; attention works on
# `(B, NH, T, hs)`: batch, heads, tokens, head size. Everything is NumPy, float64.

# %%
import math
import os

import numpy as np

from minipeft.exercises import check

FAST = os.environ.get("MINIPEFT_FAST") == "1"   # the same cells, shorter demos

# %% [markdown]
# ## Exercise 1.1: layer normalisation, forward
#
# Each token's C channels are normalised on their own, then scaled and shifted:
#
# $$\mu = \tfrac1C\sum_c x_c,\quad \sigma^2 = \tfrac1C\sum_c (x_c-\mu)^2,\quad
# \hat x = \frac{x-\mu}{\sqrt{\sigma^2+\varepsilon}},\quad y = \hat x\odot g + b$$

# %%
def layernorm_forward(x, g, b, eps):
    """x (..., C), g (C,), b (C,) -> y (..., C)."""
    ### BEGIN SOLUTION  Exercise 1.1: layernorm forward
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    return xhat * g + b
    ### END SOLUTION


check("layernorm_forward", layernorm_forward);

# %% [markdown]
# ## Exercise 1.2: layer normalisation, backward
#
# Given the upstream gradient `dout` $=\partial L/\partial y$, return
# $(\partial L/\partial x, \partial L/\partial g, \partial L/\partial b)$. With
# $d\hat x = dout\odot g$ and means over the C channels of each token:
#
# $$dx = \frac{1}{\sqrt{\sigma^2+\varepsilon}}\Big(d\hat x - \overline{d\hat x} -
# \hat x\,\overline{d\hat x\odot\hat x}\Big)$$
#
# Derive it yourself if you can: every $\hat x_c$ depends on $x$ through the mean and the
# variance as well as directly. `g` and `b` are shared by every token.

# %%
def layernorm_backward(dout, x, g, eps):
    """dout, x (..., C), g (C,) -> (dx (..., C), dg (C,), db (C,))."""
    ### BEGIN SOLUTION  Exercise 1.2: layernorm backward
    C = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    dg = (dout * xhat).reshape(-1, C).sum(axis=0)
    db = dout.reshape(-1, C).sum(axis=0)
    dxhat = dout * g
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dg, db
    ### END SOLUTION


check("layernorm_backward", layernorm_backward);

# %% [markdown]
# ## Exercise 1.3: GELU, backward
#
# GPT-2's GELU is the tanh approximation:
# $\mathrm{gelu}(x) = \tfrac12 x\,(1+\tanh u)$ with $u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)$.
# Return `dout` times its derivative.

# %%
def gelu_backward(dout, x):
    """dout, x (...) -> dx (...)."""
    ### BEGIN SOLUTION  Exercise 1.3: GELU backward
    k = math.sqrt(2.0 / math.pi)
    t = np.tanh(k * (x + 0.044715 * x ** 3))
    du_dx = k * (1 + 3 * 0.044715 * x ** 2)
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * du_dx)
    ### END SOLUTION


check("gelu_backward", gelu_backward);

# %% [markdown]
# ## Exercise 1.4: causal self-attention, forward
#
# $$s = \frac{q k^\top}{\sqrt{hs}},\qquad s_{tj} = -\infty \text{ for } j > t,\qquad
# p = \mathrm{softmax}(s),\qquad y = p\,v$$
#
# `q, k, v` are `(B, NH, T, hs)`; query `t` may see keys `0 .. t`.

# %%
def causal_attention(q, k, v):
    """q, k, v (B, NH, T, hs) -> y (B, NH, T, hs)."""
    ### BEGIN SOLUTION  Exercise 1.4: causal attention
    T, hs = q.shape[-2], q.shape[-1]
    s = q @ k.swapaxes(-1, -2) / math.sqrt(hs)
    s = np.where(np.tri(T, dtype=bool), s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v
    ### END SOLUTION


check("causal_attention", causal_attention);

# %% [markdown]
# ## Exercise 1.5: causal self-attention, backward
#
# Given `dy`, return `(dq, dk, dv)`. Recompute `p` as in the forward, then
# $dv = p^\top dy$, $dp = dy\,v^\top$, the softmax's backward
# $ds = p\odot(dp - \sum_j dp\odot p)$, and the scaled products for `dq` and `dk`.

# %%
def causal_attention_backward(dy, q, k, v):
    """dy, q, k, v (B, NH, T, hs) -> (dq, dk, dv)."""
    ### BEGIN SOLUTION  Exercise 1.5: causal attention backward
    T, hs = q.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(hs)
    s = np.where(np.tri(T, dtype=bool), q @ k.swapaxes(-1, -2) * scale, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dv = p.swapaxes(-1, -2) @ dy
    dp = dy @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) * scale
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv
    ### END SOLUTION


check("causal_attention_backward", causal_attention_backward);

# %% [markdown]
# ## Exercise 1.6: cross-entropy with ignored labels
#
# `logits (B, T, V)`, `targets (B, T)` of token ids, where `-100` means "not scored"
# (prompt tokens, padding). Return the mean over the scored tokens of
# $\log\sum_j e^{x_j} - x_t$, and its gradient with respect to the logits. Logits can be
# large: keep `exp` from overflowing.

# %%
def cross_entropy(logits, targets):
    """-> (loss: float, dlogits (B, T, V))."""
    ### BEGIN SOLUTION  Exercise 1.6: cross-entropy
    V = logits.shape[-1]
    x, t = logits.reshape(-1, V), targets.reshape(-1)
    rows = np.flatnonzero(t != -100)
    z = x[rows] - x[rows].max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    n = len(rows)
    loss = -logp[np.arange(n), t[rows]].sum() / n
    d = np.exp(logp)
    d[np.arange(n), t[rows]] -= 1
    dlogits = np.zeros_like(x)
    dlogits[rows] = d / n
    return float(loss), dlogits.reshape(logits.shape)
    ### END SOLUTION


check("cross_entropy", cross_entropy);

# %% [markdown]
# ## What next
# Part 2 puts LoRA and DoRA on top of these layers (`ex2_lora_dora`). To see how the
# package writes the same ops, read `minipeft/ops/` — each file quotes its equations.
