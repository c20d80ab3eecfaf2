# %% [markdown]
# # 02 · Backward by hand
#
# Training needs the gradient of the loss with respect to every trainable number. minipeft
# computes it without autograd: each op of `minipeft.ops` is a pair
#
# ```
# out, cache = x_forward(...)        # keeps what the backward needs
# grads      = x_backward(dout, cache)
# ```
#
# and the model's backward calls them in reverse order. This notebook derives each op's
# backward, checks it against **central finite differences** in float64,
# `(f(x + h) − f(x − h)) / 2h`, and finally compares the whole model's gradients with
# torch's autograd.
#
# One rule throughout: the upstream gradient `dout` is **random**. An all-ones `dout` (the
# gradient of `out.sum()`) hides real bugs, as the layer-norm section shows.

# %%
import matplotlib.pyplot as plt
import numpy as np

from minipeft import GPT2, load_tokenizer, ops
from minipeft.testing import cmp, grad_check

rng = np.random.default_rng(0)
checks = {}                                          # op -> worst relative error, for the summary plot

# %% [markdown]
# `grad_check(forward, inputs, backward)` draws a random `dout`, differentiates the scalar
# `sum(forward(**inputs) * dout)` numerically, entry by entry, and returns for each input
# `max|analytic − numeric| / max|numeric|`. In float64 with h = 1e-6 the numerical gradient
# itself is good to ~1e-9, so anything below ~1e-7 means "equal".

# %% [markdown]
# ## Linear: `out = x @ w + b`
#
# With `dout` of shape `(N, out)`: `dx = dout @ wᵀ`, `dw = xᵀ @ dout`, `db = Σₙ dout`.
# (Each entry of `w` multiplies one column of `x` into one column of `out`.)

# %%
x, w, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)

def linear_grads(dout):
    _, cache = ops.linear_forward(x, w, b)
    dx, dw, db = ops.linear_backward(dout, cache, w)
    return {"x": dx, "w": dw, "b": db}

checks["linear"] = grad_check(lambda x, w, b: ops.linear_forward(x, w, b)[0],
                              {"x": x, "w": w, "b": b}, linear_grads)
print(checks["linear"])

# %% [markdown]
# ## GELU: `gelu(x) = ½ x (1 + tanh u)`, `u = √(2/π) (x + 0.044715 x³)`
#
# Elementwise, so `dx = dout ⊙ gelu'(x)` with
# `gelu'(x) = ½ (1 + tanh u) + ½ x (1 − tanh² u) · √(2/π) (1 + 3 · 0.044715 x²)`.
# The picture: the analytic derivative and the finite-difference slope of the curve.

# %%
z = np.linspace(-5, 5, 201)
_, cache = ops.gelu_forward(z)
analytic = ops.gelu_backward(np.ones_like(z), cache)           # elementwise: dout = 1 reads off gelu'
h = 1e-6
numeric = (ops.gelu_forward(z + h)[0] - ops.gelu_forward(z - h)[0]) / (2 * h)
plt.figure(figsize=(5, 2.8))
plt.plot(z, ops.gelu_forward(z)[0], label="gelu(x)")
plt.plot(z, analytic, label="gelu'(x), analytic")
plt.plot(z[::10], numeric[::10], "o", ms=4, label="finite differences")
plt.legend(); plt.grid(alpha=0.3); plt.show()

xg = rng.standard_normal((3, 7)) * 2
checks["gelu"] = grad_check(lambda x: ops.gelu_forward(x)[0], {"x": xg},
                            lambda dout: {"x": ops.gelu_backward(dout, ops.gelu_forward(xg)[1])})
print(checks["gelu"])

# %% [markdown]
# ## Layer norm, derived here
#
# Forward, over the last axis of size C: `xhat = (x − μ) · rstd` with `rstd = 1/√(σ² + ε)`,
# and `out = xhat ⊙ g + b`. Backward, step by step:
#
# - `db = Σ dout`, `dg = Σ dout ⊙ xhat` (summed over the tokens);
# - `dxhat = dout ⊙ g`;
# - x reaches `xhat` three ways: directly, through μ, and through σ². Collecting the three
#   terms gives `dx = rstd · (dxhat − mean(dxhat) − xhat ⊙ mean(dxhat ⊙ xhat))`.
#
# Below, that formula written out, and a **buggy** version that forgets the σ² term.

# %%
def layernorm_backward_by_hand(dout, x, g, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    xhat = (x - mu) * rstd
    dxhat = dout * g
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, (dout * xhat).reshape(-1, x.shape[-1]).sum(0), dout.reshape(-1, x.shape[-1]).sum(0)

def layernorm_backward_buggy(dout, x, g, eps=1e-5):
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    dxhat = dout * g
    return rstd * (dxhat - dxhat.mean(-1, keepdims=True))      # the σ² path is missing

xl = rng.standard_normal((2, 3, 8))
gl, bl = rng.standard_normal(8), rng.standard_normal(8)
dout = rng.standard_normal(xl.shape)
_, cache = ops.layernorm_forward(xl, gl, bl, 1e-5)
mine, theirs = layernorm_backward_by_hand(dout, xl, gl), ops.layernorm_backward(dout, cache)
for name, a, b in zip(("dx", "dg", "db"), mine, theirs):
    cmp(f"layernorm {name}, by hand vs minipeft.ops", a, b)

def ln(x, g, b):
    return ops.layernorm_forward(x, g, b, 1e-5)[0]

def ln_grads(dout):
    dx, dg, db = layernorm_backward_by_hand(dout, xl, gl)
    return {"x": dx, "g": dg, "b": db}

checks["layernorm"] = grad_check(ln, {"x": xl, "g": gl, "b": bl}, ln_grads)
print("by hand vs finite differences:", checks["layernorm"])

# %% [markdown]
# Why a random `dout`: at GPT-2's initialisation `g = 1`, and with `dout = 1` (the gradient of
# `out.sum()`) `dxhat` is constant, so `dx` is zero for **both** versions, and the bug is
# invisible. A random `dout` exposes it.

# %%
ones_g = np.ones(8)
for name, d in (("dout = ones ", np.ones(xl.shape)), ("dout random", dout)):
    right = layernorm_backward_by_hand(d, xl, ones_g)[0]
    wrong = layernorm_backward_buggy(d, xl, ones_g)
    print(f"{name}: |right - buggy| max = {np.abs(right - wrong).max():.1e}")

# %% [markdown]
# ## Attention and its softmax
#
# `s = q kᵀ / √hs` (masked), `p = softmax(s)`, `y = p v`. Backward:
# `dv = pᵀ dy`, `dp = dy vᵀ`; the softmax's Jacobian gives `ds = p ⊙ (dp − Σⱼ dp ⊙ p)`;
# then `dq = ds k / √hs`, `dk = dsᵀ q / √hs`.

# %%
q, k, v = (rng.standard_normal((1, 2, 5, 4)) for _ in range(3))
allowed = ops.attention_mask_allowed(5, 5)                       # causal

def attn_grads(dy):
    _, cache = ops.attention_forward(q, k, v, allowed)
    dq, dk, dv = ops.attention_backward(dy, cache)
    return {"q": dq, "k": dk, "v": dv}

checks["attention"] = grad_check(lambda q, k, v: ops.attention_forward(q, k, v, allowed)[0],
                                 {"q": q, "k": k, "v": v}, attn_grads)
print(checks["attention"])

# %% [markdown]
# ## Cross-entropy
#
# `loss = mean over counted tokens of (logsumexp(logits) − logits[target])`, so
# `dlogits = (softmax(logits) − onehot(target)) / count`, zero on ignored (`-100`) rows.

# %%
logits = rng.standard_normal((2, 4, 11))
targets = np.array([[3, 1, -100, 7], [0, 10, 2, -100]])

def ce_grads(dloss):
    _, cache = ops.cross_entropy_forward(logits, targets)
    return {"logits": ops.cross_entropy_backward(float(dloss), cache)}

checks["cross-entropy"] = grad_check(lambda logits: ops.cross_entropy_forward(logits, targets)[0],
                                     {"logits": logits}, ce_grads)
print(checks["cross-entropy"])

# %% [markdown]
# A row whose target is `-100` gets a zero gradient, and it adds nothing to the loss: its
# logits need not exist at all. Training therefore runs the lm_head and the loss together
# on the counted rows only, `ops.lm_head_loss(xf, wte, targets)`: `xf[rows] @ wte.T`, the
# cross-entropy of those rows, and `dxf[rows] = dlogits @ wte`. With completion-only labels
# (the prompt's tokens `-100`) that skips most of the step's largest product. Same loss,
# same gradient as the logits of every row:

# %%
xf, wte_ = rng.standard_normal((2, 4, 5)), rng.standard_normal((11, 5))
full_loss, full_cache = ops.cross_entropy_forward(xf @ wte_.T, targets)        # (2, 4, 11) logits
full_dxf = ops.cross_entropy_backward(1.0, full_cache) @ wte_
loss_rows, dxf, _ = ops.lm_head_loss(xf, wte_, targets)                        # 6 of 8 rows computed
print(f"loss {full_loss:.12f} vs {loss_rows:.12f}; dxf max diff {np.abs(full_dxf - dxf).max():.1e}")
assert np.isclose(full_loss, loss_rows, rtol=1e-12) and np.allclose(full_dxf, dxf, rtol=1e-12, atol=0)

# %% [markdown]
# ## Embedding: a gather, so its backward is a scatter-add
#
# `x[b, t] = wte[ids[b, t]] + wpe[t]`. A token that appears twice gets the **sum** of both
# gradients (`np.add.at`, not `dwte[ids] = dout`, which would keep only one).

# %%
ids = np.array([[5, 2, 5, 0]])                                   # token 5 appears twice
wte, wpe = rng.standard_normal((8, 3)), rng.standard_normal((6, 3))
pos = np.arange(4)[None]

def emb_grads(dout):
    _, cache = ops.embedding_forward(ids, wte, wpe, pos)
    dwte, dwpe = ops.embedding_backward(dout, cache)
    return {"wte": dwte, "wpe": dwpe}

checks["embedding"] = grad_check(lambda wte, wpe: ops.embedding_forward(ids, wte, wpe, pos)[0],
                                 {"wte": wte, "wpe": wpe}, emb_grads)
print(checks["embedding"])

# %%
names = [f"{op}: {arg}" for op, errs in checks.items() for arg in errs]
errors = [e for errs in checks.values() for e in errs.values()]
plt.figure(figsize=(7, 2.8))
plt.bar(range(len(errors)), errors)
plt.yscale("log"); plt.axhline(1e-6, color="r", ls="--", label="1e-6")
plt.xticks(range(len(errors)), names, rotation=60, ha="right", fontsize=8)
plt.ylabel("max rel. error vs\nfinite differences"); plt.legend(); plt.tight_layout(); plt.show()
assert max(errors) < 1e-6, "a backward disagrees with finite differences"

# %% [markdown]
# ## The whole model
#
# `model.backward(dlogits, cache)` walks the blocks from the last to the first, calling the
# backward of each line of the forward. First a finite-difference check of a few entries of
# a few tensors (each entry costs two forward passes), then every gradient against torch.

# %%
model = GPT2.from_pretrained("tiny-shakespeare").astype(np.float64)
tok = load_tokenizer("tiny-shakespeare")
ids = np.array([tok.encode("JULIET: O Romeo, Romeo, wherefore art thou Romeo?").ids])
loss, grads = model.loss_and_grads(ids, labels=ids)
print(f"loss {loss:.4f}; {len(grads)} gradients")

h = 1e-6
for name in ("transformer.wte.weight", "transformer.h.0.ln_1.weight",
             "transformer.h.2.attn.c_attn.weight", "transformer.h.3.mlp.c_proj.bias"):
    w = model.params[name]
    worst = 0.0
    for flat in rng.choice(w.size, size=4, replace=False):
        i = np.unravel_index(flat, w.shape)
        old = w[i]
        w[i] = old + h; up = model.loss(ids, ids)
        w[i] = old - h; down = model.loss(ids, ids)
        w[i] = old
        numeric = (up - down) / (2 * h)
        worst = max(worst, abs(grads[name][i] - numeric))
    # relative to the tensor's largest gradient, the project's measure (an entry near 0
    # cannot be resolved by differences of a loss of size ~5: round-off ~1e-16 * 5 / h)
    print(f"{name:36s} 4 entries: max|analytic − numeric| / max|grad| = "
          f"{worst / np.abs(grads[name]).max():.1e}")

# %% [markdown]
# ### Against torch
#
# The same weights in `transformers`, float64, `loss.backward()`; then every parameter's
# gradient side by side. (`lm_head` is tied to `wte`: torch sums both uses into one
# gradient, and so does minipeft.) This cell runs only when torch and transformers are
# installed.

# %%
try:
    import torch
    import transformers
except ImportError as e:
    print(f"skipped: {e.name} is not installed (pip install -e '.[test]' brings it)")
else:
    folder = model.astype(np.float32).save_pretrained("out/tiny-shakespeare", overwrite=True)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).double()
    t_ids = torch.as_tensor(ids)
    t_logits = hf(t_ids).logits                      # (B, T, V) float64
    # next-token loss as GPT2LMHeadModel's, in float64 (its labels= path casts logits to float32)
    t_loss = torch.nn.functional.cross_entropy(t_logits[:, :-1].reshape(-1, t_logits.shape[-1]),
                                               t_ids[:, 1:].reshape(-1))
    t_loss.backward()
    print(f"loss: minipeft {loss:.15f}  torch {t_loss.item():.15f}\n")
    print(f"{'parameter':36s} {'shape':>12s}  max|ours − torch| / max|torch|")
    rel = {}
    for name, p in hf.named_parameters():
        rel[name] = cmp(name, grads[name], p.grad.numpy(), verbose=False)
        print(f"{name:36s} {str(tuple(p.shape)):>12s}  {rel[name]:.1e}")
    print(f"\nworst over {len(rel)} tensors: {max(rel.values()):.1e} "
          "(float64: the project holds it below 1e-10)")

# %% [markdown]
# ## What to try next
#
# - Break an op on purpose (drop the `− mean(dxhat)` term of layer norm) and watch the
#   checks catch it; then try it with `dout = np.ones(...)`.
# - Read `model.backward` in `minipeft/model/gpt2.py`: each line quotes the forward line
#   it differentiates.
# - `minipeft/kernels/` holds Numba versions of these ops; `model.use_kernels = False` runs
#   the NumPy twins above, and `tests/test_ops_kernels.py` holds the two equal.
# - Continue with **03 · LoRA**: the first PEFT method, whose backward adds two small
#   products to the linear layer's.
