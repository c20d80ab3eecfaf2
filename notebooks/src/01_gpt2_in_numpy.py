# %% [markdown]
# # 01 · GPT-2 in NumPy, op by op
#
# GPT-2 is a stack of identical blocks between an embedding and a tied output layer:
#
# ```
# x = wte[ids] + wpe[pos]                              (B, T, C)  embedding
# for each block h.0 .. h.{L-1}:
#     x = x + c_proj(attention(c_attn(ln_1(x))))       causal self-attention
#     x = x + mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))      feed-forward, width 4C
# logits = ln_f(x) @ wte.T                             (B, T, V)  lm_head tied to wte
# ```
#
# This notebook runs those lines one at a time on the small GPT-2 bundled with minipeft,
# with the ops of `minipeft.ops`, and prints every shape. Attention is written out by hand
# once, to see it, and then compared with the package's. At the end the whole pass is
# compared with `model(ids)` and, when installed, with Hugging Face `transformers`.

# %%
import matplotlib.pyplot as plt
import numpy as np

from minipeft import GPT2, load_tokenizer, ops
from minipeft.testing import cmp

model = GPT2.from_pretrained("tiny-shakespeare")
tok = load_tokenizer("tiny-shakespeare")
cfg, P = model.config, model.params
print(cfg)
print(f"{model.num_parameters():,} parameters")

# %% [markdown]
# ## The weights
#
# `model.params` is a plain dict from the names of `transformers`' `GPT2LMHeadModel` to
# NumPy arrays. Linear layers (GPT-2's `Conv1D`) are stored `[in, out]`, so a layer is
# just `x @ w + b`.

# %%
for name, w in P.items():
    if not name.startswith("transformer.h.") or name.startswith("transformer.h.0."):
        print(f"{name:36s} {str(w.shape):>12s}")
print(f"... and the same 12 tensors for each of the {cfg.n_layer} blocks")

# %% [markdown]
# ## Tokens and the embedding
#
# The tokenizer is GPT-2's byte-level BPE, trained here on Shakespeare (2,048 tokens). A
# leading space belongs to the word that follows it (`Ġ` marks it).

# %%
text = "ROMEO: But soft, what light through yonder window breaks?"
enc = tok.encode(text)
ids = np.array([enc.ids])                            # (B, T) = (1, 16)
tokens = enc.tokens
print(tokens)
B, T = ids.shape
C, NH = cfg.n_embd, cfg.n_head
hs = C // NH

pos = np.arange(T)[None, :]                          # (1, T)
x, _ = ops.embedding_forward(ids, P["transformer.wte.weight"], P["transformer.wpe.weight"], pos)
print("x:", x.shape, "= wte[ids] + wpe[pos]")

# %% [markdown]
# ## Block 0, line by line
#
# **Layer norm** centres and scales each token's vector, then applies a learned gain and bias:
# `xhat = (x - mean) / sqrt(var + eps)`, `out = xhat * g + b`.

# %%
h = "transformer.h.0"
eps = cfg.layer_norm_epsilon
ln1, _ = ops.layernorm_forward(x, P[f"{h}.ln_1.weight"], P[f"{h}.ln_1.bias"], eps)   # (B, T, C)
print("ln_1:", ln1.shape, " mean of a row", ln1[0, 3].mean().round(3), " std", ln1[0, 3].std().round(3))

# %% [markdown]
# **c_attn** makes the queries, keys and values of all heads in one product, `(B, T, C) ->
# (B, T, 3C)`, which `split_heads` cuts into three `(B, NH, T, hs)` arrays.

# %%
qkv, _ = ops.linear_forward(ln1, P[f"{h}.attn.c_attn.weight"], P[f"{h}.attn.c_attn.bias"])
q, k, v = ops.split_heads(qkv, NH)
print("qkv:", qkv.shape, "-> q, k, v:", q.shape, f"(B, NH, T, hs) with hs = C / NH = {hs}")

# %% [markdown]
# **Attention, by hand.** Each query scores every key, `s = q kᵀ / √hs`; a token may not
# look at the future, so scores above the diagonal are set to −∞; softmax turns each row
# into weights that sum to 1; the output is the weighted sum of the values.

# %%
def attention_by_hand(q, k, v):
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])        # (B, NH, T, T) scores
    T = q.shape[2]
    causal = np.tril(np.ones((T, T), dtype=bool))            # query t sees keys 0..t
    s = np.where(causal, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)                            # softmax over the keys
    return p @ v, p                                          # (B, NH, T, hs), (B, NH, T, T)

y_hand, p = attention_by_hand(q, k, v)
y_pkg, _ = ops.attention_forward(q, k, v, ops.attention_mask_allowed(T, T))
cmp("attention, by hand vs minipeft.ops", y_hand, y_pkg)

# %% [markdown]
# The attention weights `p` are a picture: row t says where token t looks.

# %%
def plot_attention(p, tokens, title):
    n = p.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4))
    for head, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(p[head], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {head}")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens if head == 0 else [], fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()

plot_attention(p[0], tokens, "layer 0: where each token (row) looks (column)")

# %% [markdown]
# The rest of the block: merge the heads back to `(B, T, C)`, project with `c_proj`, add the
# residual; then layer norm, the MLP (`C -> 4C`, GELU, `4C -> C`) and the second residual.

# %%
def block(x, i):
    h = f"transformer.h.{i}"
    ln1, _ = ops.layernorm_forward(x, P[f"{h}.ln_1.weight"], P[f"{h}.ln_1.bias"], eps)
    qkv, _ = ops.linear_forward(ln1, P[f"{h}.attn.c_attn.weight"], P[f"{h}.attn.c_attn.bias"])
    y, p = attention_by_hand(*ops.split_heads(qkv, NH))                          # (B, NH, T, hs)
    a, _ = ops.linear_forward(ops.merge_heads(y), P[f"{h}.attn.c_proj.weight"],
                              P[f"{h}.attn.c_proj.bias"])                       # (B, T, C)
    x = x + a                                                                   # residual
    ln2, _ = ops.layernorm_forward(x, P[f"{h}.ln_2.weight"], P[f"{h}.ln_2.bias"], eps)
    f, _ = ops.linear_forward(ln2, P[f"{h}.mlp.c_fc.weight"], P[f"{h}.mlp.c_fc.bias"])  # (B, T, 4C)
    g, _ = ops.gelu_forward(f)
    m, _ = ops.linear_forward(g, P[f"{h}.mlp.c_proj.weight"], P[f"{h}.mlp.c_proj.bias"])  # (B, T, C)
    return x + m, p                                                             # residual

# %% [markdown]
# GELU, the MLP's non-linearity, is a smooth ReLU (GPT-2 uses its tanh approximation):

# %%
z = np.linspace(-4, 4, 200)
plt.figure(figsize=(4, 2.6))
plt.plot(z, ops.gelu_forward(z)[0], label="GELU (tanh approx.)")
plt.plot(z, np.maximum(z, 0), "--", label="ReLU")
plt.legend(); plt.grid(alpha=0.3); plt.show()

# %% [markdown]
# ## The whole pass, and the model's own
#
# Every block, the final layer norm, and the output layer, which reuses the token embedding
# `wte` (the weights are *tied*): the logit of token v is the dot product of the last hidden
# vector with v's embedding.

# %%
x, _ = ops.embedding_forward(ids, P["transformer.wte.weight"], P["transformer.wpe.weight"], pos)
hidden, maps = [x], []
for i in range(cfg.n_layer):
    x, p = block(x, i)
    hidden.append(x)
    maps.append(p)
xf, _ = ops.layernorm_forward(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], eps)
logits = xf @ P["transformer.wte.weight"].T                                     # (B, T, V)
print("logits:", logits.shape)
# float32, with Numba kernels in the model and NumPy here: equal to rounding (~1e-6)
cmp("logits, this notebook vs model(ids)", logits, model(ids), tol=1e-4)

# %%
plot_attention(maps[-1][0], tokens, f"layer {cfg.n_layer - 1}: the last block's heads")

# %% [markdown]
# ## What the model predicts
#
# The softmax of the last position's logits is the distribution of the next token.

# %%
def next_token_plot(prompt, k=10):
    logits = model(np.array([tok.encode(prompt).ids]))[0, -1]          # (V,)
    prob = np.exp(logits - logits.max()); prob /= prob.sum()
    top = np.argsort(prob)[::-1][:k]
    plt.figure(figsize=(5, 2.6))
    plt.barh(range(k)[::-1], prob[top], color="tab:blue")
    plt.yticks(range(k)[::-1], [repr(tok.decode([int(t)])) for t in top])
    plt.xlabel("probability"); plt.title(f"after {prompt!r}")
    plt.tight_layout(); plt.show()

next_token_plot("ROMEO: But soft, what light through yonder")
next_token_plot("JULIET:\nO Romeo, Romeo, wherefore art thou")

# %% [markdown]
# Generating is repeating that: pick a token, append it, run again. `model.generate` keeps a
# KV cache (the keys and values of the tokens already seen) so that each new token costs
# one token's work.

# %%
out = model.generate(np.array([tok.encode("ROMEO:").ids]), max_new_tokens=40)
print(tok.decode(out[0].tolist()))

# %% [markdown]
# ## Layer by layer against Hugging Face `transformers`
#
# The same weights in `transformers`' `GPT2LMHeadModel`, both in float64, compared after the
# embedding and after every block. (The last of Hugging Face's `hidden_states` is taken after
# the final layer norm.) This cell runs only when torch and transformers are installed.

# %%
try:
    import torch
    import transformers
except ImportError as e:
    print(f"skipped: {e.name} is not installed (pip install -e '.[test]' brings it)")
else:
    folder = model.save_pretrained("out/tiny-shakespeare", overwrite=True)   # a Hugging Face folder too
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).double().eval()
    m64 = model.astype(np.float64)
    ours_logits, cache = m64.forward(ids)
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids), output_hidden_states=True)
    ours_h = cache["hidden_states"][:-1] + [cache["xf"]]
    names = ["embedding"] + [f"block {i}" for i in range(cfg.n_layer - 1)] + \
            [f"block {cfg.n_layer - 1} + ln_f"]
    rel = [cmp(n, a, b.numpy()) for n, a, b in zip(names, ours_h, theirs.hidden_states)]
    rel.append(cmp("logits", ours_logits, theirs.logits.numpy()))
    plt.figure(figsize=(6, 2.6))
    plt.bar(range(len(rel)), rel)
    plt.yscale("log"); plt.axhline(1e-10, color="r", ls="--", label="the project's float64 bar")
    plt.xticks(range(len(rel)), names + ["logits"], rotation=30, ha="right")
    plt.ylabel("max|ours − HF| / max|HF|"); plt.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# ## What to try next
#
# - Read `minipeft/model/gpt2.py`: the same lines as `block` above, with the hooks where
#   PEFT methods enter.
# - Plot the attention of another line, or of every layer: do some heads look at the
#   previous token, some at the first?
# - `model.generate(..., do_sample=True, temperature=0.8, top_k=40, seed=0)` samples
#   instead of taking the most likely token.
# - Continue with **02 · Backward by hand**: the gradients of these ops.
