# %% [markdown]
# # Exercises, part 3: IA3, prefix tuning, prompt tuning, bottleneck adapters
#
# Write each function, run the check below it; a check prints a verdict and never stops
# the notebook. Conv1D weights are `[in, out]` (`x @ W + b`); the adapters' weights keep
# nn.Linear's `[out, in]` layout, as AdapterHub stores them.

# %%
import math
import os

import numpy as np

from minipeft.exercises import check

FAST = os.environ.get("MINIPEFT_FAST") == "1"

# %% [markdown]
# ## Exercise 3.1: IA3, forward
#
# IA3 learns one vector `l` per adapted layer that rescales activations elementwise, in
# one of two places:
#
# - output scaling (`feedforward=False`, e.g. `c_attn`): $h = (xW + b)\odot l$, `l (out,)`
# - input scaling (`feedforward=True`, `mlp.c_proj`): $h = (x\odot l)W + b$, `l (in,)`

# %%
def ia3_forward(x, W, b, l, feedforward):
    """x (N, in), W (in, out), b (out,), l (in,) or (out,) -> h (N, out)."""
    ### BEGIN SOLUTION  Exercise 3.1: IA3 forward
    if feedforward:
        return (x * l) @ W + b
    return (x @ W + b) * l
    ### END SOLUTION


check("ia3_forward", ia3_forward);

# %% [markdown]
# ## Exercise 3.2: IA3, backward
#
# Return `(dx, dl)` for both placements (W and b are frozen).

# %%
def ia3_backward(dh, x, W, b, l, feedforward):
    """dh (N, out) -> (dx (N, in), dl with l's shape)."""
    ### BEGIN SOLUTION  Exercise 3.2: IA3 backward
    if feedforward:
        du = dh @ W.T                     # the gradient reaching x ⊙ l
        return du * l, (du * x).sum(axis=0)
    dx = (dh * l) @ W.T
    dl = (dh * (x @ W + b)).sum(axis=0)
    return dx, dl
    ### END SOLUTION


check("ia3_backward", ia3_backward);

# %% [markdown]
# ## Exercise 3.3: prefix tuning's attention
#
# Prefix tuning gives every layer P trained key **and** value vectors per head, the
# same for every sequence. `prefix_k, prefix_v` are `(NH, P, hs)`; `q, k, v` are
# `(B, NH, T, hs)`. Put the prefix in front of the keys and values, then attend: every
# token sees all P prefix slots, and the tokens causally among themselves.

# %%
def prefix_attention(q, k, v, prefix_k, prefix_v):
    """-> y (B, NH, T, hs)."""
    ### BEGIN SOLUTION  Exercise 3.3: prefix attention
    B, NH, T, hs = q.shape
    P = prefix_k.shape[1]
    K = np.concatenate([np.broadcast_to(prefix_k, (B, NH, P, hs)), k], axis=2)
    V = np.concatenate([np.broadcast_to(prefix_v, (B, NH, P, hs)), v], axis=2)
    s = q @ K.swapaxes(-1, -2) / math.sqrt(hs)
    allowed = np.tri(T, P + T, k=P, dtype=bool)    # query t sees keys 0 .. P + t
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p @ V
    ### END SOLUTION


check("prefix_attention", prefix_attention);

# %% [markdown]
# ## Exercise 3.4: prompt tuning, the soft prompt's gradient
#
# Prompt tuning puts P trained vectors in front of every sequence's token embeddings:
# `x = concat(prompt, wte[ids]) + wpe[pos]`, `x (B, P + T, C)`. Given `dx`, the gradient
# reaching `x`, return the gradient of `prompt (P, C)`.

# %%
def prompt_backward(dx, num_virtual_tokens):
    """dx (B, P + T, C) -> dprompt (P, C)."""
    ### BEGIN SOLUTION  Exercise 3.4: prompt backward
    return dx[:, :num_virtual_tokens].sum(axis=0)
    ### END SOLUTION


check("prompt_backward", prompt_backward);

# %% [markdown]
# ## Exercise 3.5: a bottleneck adapter, forward
#
# Pfeiffer's adapter (AdapterHub's `seq_bn`) sits after GPT-2's MLP. With `x` the
# residual stream and `a` the MLP's output, both `(N, C)`:
#
# $$h = x + a,\qquad y = h + \mathrm{relu}(h W_d^\top + b_d) W_u^\top + b_u$$
#
# `W_down (m, C)`, `W_up (C, m)`: nn.Linear's layout; m is the bottleneck width.

# %%
def bottleneck_forward(x, a, W_down, b_down, W_up, b_up):
    """-> y (N, C)."""
    ### BEGIN SOLUTION  Exercise 3.5: bottleneck adapter forward
    h = x + a
    return h + np.maximum(h @ W_down.T + b_down, 0) @ W_up.T + b_up
    ### END SOLUTION


check("bottleneck_forward", bottleneck_forward);

# %% [markdown]
# ## Exercise 3.6: a bottleneck adapter, backward
#
# Return the gradients of everything the adapter reads:
# `(dx, da, dW_down, db_down, dW_up, db_up)`.

# %%
def bottleneck_backward(dy, x, a, W_down, b_down, W_up, b_up):
    """dy (N, C) -> (dx, da (N, C), dW_down (m, C), db_down (m,), dW_up (C, m), db_up (C,))."""
    ### BEGIN SOLUTION  Exercise 3.6: bottleneck adapter backward
    h = x + a
    pre = h @ W_down.T + b_down
    d = np.maximum(pre, 0)
    dW_up, db_up = dy.T @ d, dy.sum(axis=0)
    dpre = (dy @ W_up) * (pre > 0)
    dW_down, db_down = dpre.T @ h, dpre.sum(axis=0)
    dh = dy + dpre @ W_down                # the identity path and the adapter's
    return dh, dh, dW_down, db_down, dW_up, db_up
    ### END SOLUTION


check("bottleneck_backward", bottleneck_backward);

# %% [markdown]
# ## What next
# Part 4 (`ex4_training`) trains: one AdamW step, what each method costs, a loop.
