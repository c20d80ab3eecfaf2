# %% [markdown]
# # Exercises, part 2: LoRA and DoRA on GPT-2's Conv1D layers
#
# GPT-2's linear layers are `Conv1D`: the weight is stored **[in, out]** and the layer
# computes `x @ W + b`. LoRA's matrices keep peft's (nn.Linear) layout:
# `A = lora_A.weight` is `(r, in)` and `B = lora_B.weight` is `(out, r)`.
# `x` is `(N, in)`: N tokens. Write each function, run the check below it; a check
# prints a verdict and never stops the notebook.

# %%
import os

import numpy as np

from minipeft.exercises import check

FAST = os.environ.get("MINIPEFT_FAST") == "1"

# %% [markdown]
# ## Exercise 2.1: LoRA, forward
#
# $$h = x W + b + s\; x A^\top B^\top,\qquad s = \frac{\alpha}{r}$$

# %%
def lora_forward(x, W, b, A, B, lora_alpha, r):
    """x (N, in), W (in, out), b (out,), A (r, in), B (out, r) -> h (N, out)."""
    ### BEGIN SOLUTION  Exercise 2.1: LoRA forward
    s = lora_alpha / r
    return x @ W + b + s * (x @ A.T) @ B.T
    ### END SOLUTION


check("lora_forward", lora_forward);

# %% [markdown]
# ## Exercise 2.2: LoRA, backward
#
# W and b are frozen; return the gradients of the input and of the two trained
# matrices: `(dx, dA, dB)`, each with the shape of what it is the gradient of.

# %%
def lora_backward(dh, x, W, A, B, lora_alpha, r):
    """dh (N, out) -> (dx (N, in), dA (r, in), dB (out, r))."""
    ### BEGIN SOLUTION  Exercise 2.2: LoRA backward
    s = lora_alpha / r
    u = x @ A.T                         # (N, r)
    du = s * dh @ B                     # (N, r)
    dB = s * dh.T @ u                   # (out, r)
    dA = du.T @ x                       # (r, in)
    dx = dh @ W.T + du @ A              # the frozen path and the update's
    return dx, dA, dB
    ### END SOLUTION


check("lora_backward", lora_backward);

# %% [markdown]
# ## Exercise 2.3: merging LoRA into the weight
#
# After training, the update folds into W so that inference costs nothing extra:
# return the merged weight, in W's `[in, out]` layout, with `x @ W_merged + b` equal to
# the LoRA layer's output.

# %%
def lora_merge(W, A, B, lora_alpha, r):
    """-> W_merged (in, out)."""
    ### BEGIN SOLUTION  Exercise 2.3: LoRA merge
    return W + (lora_alpha / r) * (B @ A).T
    ### END SOLUTION


check("lora_merge", lora_merge);

# %% [markdown]
# ## Exercise 2.4: DoRA's column norm
#
# DoRA (Liu et al. 2024) splits the adapted weight $W_0 + s(BA)^\top$ into a magnitude
# `m` (one per output) and a direction. Return the norm of each output column of the
# adapted weight, shape `(out,)`.

# %%
def dora_weight_norm(W, A, B, lora_alpha, r):
    """-> norm (out,)."""
    ### BEGIN SOLUTION  Exercise 2.4: DoRA weight norm
    V = W + (lora_alpha / r) * (B @ A).T
    return np.sqrt((V ** 2).sum(axis=0))
    ### END SOLUTION


check("dora_weight_norm", dora_weight_norm);

# %% [markdown]
# ## Exercise 2.5: DoRA, forward
#
# $$h = x\Big(m\odot\frac{W_0 + s(BA)^\top}{\lVert W_0 + s(BA)^\top\rVert_c}\Big) + b$$
#
# (peft computes it as $xW_0 + b + (g-1)\odot xW_0 + g\odot s\,xA^\top B^\top$ with
# $g = m/\lVert\cdot\rVert_c$: the same numbers.)

# %%
def dora_forward(x, W, b, A, B, magnitude, lora_alpha, r):
    """magnitude (out,) -> h (N, out)."""
    ### BEGIN SOLUTION  Exercise 2.5: DoRA forward
    V = W + (lora_alpha / r) * (B @ A).T
    g = magnitude / np.sqrt((V ** 2).sum(axis=0))
    return (x @ V) * g + b
    ### END SOLUTION


check("dora_forward", dora_forward);

# %% [markdown]
# ## Exercise 2.6: DoRA, backward
#
# The paper (§4.3) and peft treat the column norm as a constant in backward ("detached"):
# it saves memory and changes little. Return `(dx, dA, dB, dmagnitude)` under that rule.

# %%
def dora_backward(dh, x, W, A, B, magnitude, lora_alpha, r):
    """dh (N, out) -> (dx (N, in), dA (r, in), dB (out, r), dmagnitude (out,))."""
    ### BEGIN SOLUTION  Exercise 2.6: DoRA backward
    s = lora_alpha / r
    V = W + s * (B @ A).T
    norm = np.sqrt((V ** 2).sum(axis=0))       # a constant in backward
    g = magnitude / norm
    dV = (x.T @ dh) * g                       # (in, out): the gradient of V, norm held fixed
    dA = s * B.T @ dV.T
    dB = s * dV.T @ A.T
    dmagnitude = ((x.T @ dh) * V).sum(axis=0) / norm
    dx = dh @ (V * g).T
    return dx, dA, dB, dmagnitude
    ### END SOLUTION


check("dora_backward", dora_backward);

# %% [markdown]
# ## What next
# Part 3 (`ex3_other_methods`) does IA3, prefix and prompt tuning and bottleneck adapters.
# The package's versions are in `minipeft/peft/lora.py`, with the papers' equations.
