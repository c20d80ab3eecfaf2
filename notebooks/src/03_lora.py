# %% [markdown]
# # 03 · LoRA
#
# LoRA (Hu et al. 2021, *LoRA: Low-Rank Adaptation of Large Language Models*) freezes a
# weight W₀ and learns a low-rank change to it:
#
# ```
# h = x W₀ + b + s · drop(x) Aᵀ Bᵀ        A (r, in), B (out, r), s = α / r
# ```
#
# (GPT-2 stores W₀ as `[in, out]`, so the change to W₀ is `ΔW = s · (B A)ᵀ`.) Only A and B
# train: `r · (in + out)` numbers instead of `in · out`. This notebook looks at each part:
# the init, the scale `s = α / r`, merging, two variants (rsLoRA and DoRA), a rank sweep,
# and what the trained `ΔW` looks like, with the LoRA paper's own measures
# (`minipeft.analysis`). The code: `minipeft/peft/lora.py` (the equations) and
# `lora_model.py` (the `_linear` hook).

# %%
# %matplotlib inline
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from minipeft import GPT2, LoraConfig, analysis, get_peft_model, load_tokenizer
from minipeft.testing import cmp

warnings.filterwarnings("ignore", message="fan_in_fan_out")   # peft's note for GPT-2's Conv1D; seen in 00

FAST = os.environ.get("MINIPEFT_FAST") == "1"   # the test suite sets it: the same cells, shorter training
STEPS = 3 if FAST else 100
BATCH = 4 if FAST else 16
N_EVAL = 8 if FAST else 50

tok = load_tokenizer("tiny-shakespeare")
eos = tok.token_to_id("<|endoftext|>")
base = GPT2.from_pretrained("tiny-shakespeare")
ids = np.array([tok.encode("ROMEO: But soft, what light through yonder window breaks?").ids])

# %% [markdown]
# ## The init: B = 0, the base model exactly
#
# A starts random (Kaiming-uniform, as peft), B at zero, so `B A = 0` and the adapted model
# *is* the base model at step 0. Gradients still flow: `∂L/∂B = s · (x Aᵀ)ᵀ dh` is not zero,
# so B moves at the first step, and A follows.

# %%
pm = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"),
                    LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"]))
cmp("B = 0: logits vs the base model", pm(ids), base(ids))
loss, grads = pm.loss_and_grads(ids, labels=ids)
name = "base_model.model.transformer.h.0.attn.c_attn"
print(f"|dL/dA| = {np.abs(grads[name + '.lora_A.weight']).max():.1e}  (zero: B = 0 blocks it)")
print(f"|dL/dB| = {np.abs(grads[name + '.lora_B.weight']).max():.1e}  (not zero: B moves first)")

# %% [markdown]
# ## Merging, and the invariants that make LoRA trustworthy
#
# Because the change is linear, it can be folded into the weight, `W = W₀ + s (B A)ᵀ`,
# and LoRA then costs nothing at inference. Three invariants (minLoRA's, and
# `tests/test_lora_model.py`'s): `disable_adapter()` gives the base model back; merging
# keeps the output; unmerging restores W₀.

# %%
rng = np.random.default_rng(0)
for a in pm.trainable_parameters().values():            # a non-zero adapter
    a[...] = 0.05 * rng.standard_normal(a.shape)
adapted = pm(ids)
W0 = pm.params["transformer.h.0.attn.c_attn.weight"].copy()
with pm.disable_adapter():
    cmp("disable_adapter() vs the base model", pm(ids), base(ids))
pm.merge_adapter()
cmp("merged vs unmerged (float32 rounding)", pm(ids), adapted)
pm.unmerge_adapter()
cmp("W after merge + unmerge vs W0 (float32 rounding)", pm.params["transformer.h.0.attn.c_attn.weight"], W0)
merged = pm.merge_and_unload()
print(type(merged).__name__, f"{merged.num_parameters():,} parameters: a plain GPT-2 again")

# %% [markdown]
# ## r and α
#
# The scale `s = α / r` keeps the size of the change roughly independent of r at the start
# of training: the paper sets α once (to the first r it tries) and does not tune it. With
# α fixed, doubling r halves s. **rsLoRA** (Kalajdzievski 2023) shows that for large r
# this shrinks the update too much, and uses `s = α / √r` instead (`use_rslora=True`).

# %%
rs = np.array([1, 2, 4, 8, 16, 32, 64, 128])
plt.figure(figsize=(5, 2.8))
plt.plot(rs, 32 / rs, "o-", label="LoRA: α / r")
plt.plot(rs, 32 / np.sqrt(rs), "o-", label="rsLoRA: α / √r")
plt.xscale("log", base=2); plt.yscale("log"); plt.xlabel("rank r"); plt.ylabel("scale s (α = 32)")
plt.legend(); plt.grid(alpha=0.3); plt.show()

# %% [markdown]
# ## A rank sweep on the restaurant task
#
# The same budget for every r, α = 32 fixed as the paper does, LoRA on every linear layer.
# Trainable parameters grow linearly with r; does the result? (100 steps are a third of the
# quick tour's 300: exact match, all or nothing per sentence, stays near zero; the held-out
# loss and the slot error show the differences.)

# %%
from minipeft.demo import greedy_completions, one_line
from minipeft.tasks.restaurants import make_examples, score
from minipeft.train.data import batches, encode_examples
from minipeft.train.trainer import Trainer, TrainingArguments, example_batches

train_examples, eval_examples = make_examples(2000, seed=0), make_examples(N_EVAL, seed=1)
n_pos = base.config.n_positions
train_data = encode_examples(one_line(train_examples), tok, n_pos, eos)
eval_data = batches(encode_examples(one_line(eval_examples), tok, n_pos, eos), 16, seed=0, epoch=0)
prompts = [e["prompt"] for e in eval_examples]

def fine_tune(config, lr=1e-2):
    model = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"), config)
    args = TrainingArguments(learning_rate=lr, max_steps=STEPS, warmup_steps=max(1, STEPS // 20),
                             eval_steps=STEPS)
    history = Trainer(model, args, example_batches(train_data, BATCH, seed=0),
                      eval_batches=eval_data, progress=False).train()
    result = score(greedy_completions(model, tok, prompts, 40, eos), eval_examples)
    n = sum(a.size for a in model.trainable_parameters().values())
    return model, {"params": n, "eval_loss": history[-1]["eval_loss"], **result}

sweep = {}
for r in (1, 8, 64):
    sweep[r] = fine_tune(LoraConfig(r=r, lora_alpha=32, target_modules="all-linear"))
    row = sweep[r][1]
    print(f"r = {r:3d}: {row['params']:>8,} trainable, eval loss {row['eval_loss']:.3f}, "
          f"exact match {row['exact_match']:.0%}, slot error {row['slot_error']:.0%}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
params = [sweep[r][1]["params"] for r in sweep]
axes[0].plot(params, [sweep[r][1]["eval_loss"] for r in sweep], "o-")
axes[0].set_ylabel("held-out loss")
axes[1].plot(params, [sweep[r][1]["slot_error"] for r in sweep], "o-", label="slot error")
axes[1].plot(params, [sweep[r][1]["exact_match"] for r in sweep], "o-", label="exact match")
axes[1].legend()
for r, p in zip(sweep, params):
    axes[0].annotate(f"r={r}", (p, sweep[r][1]["eval_loss"]), textcoords="offset points",
                     xytext=(4, 4), fontsize=8)
for ax in axes:
    ax.set_xscale("log"); ax.set_xlabel("trainable parameters")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## rsLoRA and DoRA
#
# **rsLoRA** at r = 64 with α = 32 scales the update by 32/√64 = 4 where LoRA uses 32/64 = 0.5:
# at the same learning rate its steps are 8 × larger. Its paper's claim is that with α/√r the
# best learning rate no longer depends on r; the learning rate here was chosen for LoRA.
#
# **DoRA** (Liu et al. 2024) splits each output column of the weight into a magnitude and a
# direction, `W = m ⊙ V / ‖V‖_c` with `V = W₀ + s (B A)ᵀ`, trains the magnitude `m` directly
# and the direction through LoRA (`use_dora=True`; the norm is held constant in backward, as
# the paper and peft do). Both variants against plain LoRA, at the same budget:

# %%
variants = {
    "LoRA r=64": sweep[64][1],
    "rsLoRA r=64": fine_tune(LoraConfig(r=64, lora_alpha=32, use_rslora=True,
                                        target_modules="all-linear"))[1],
    "LoRA r=8": sweep[8][1],
    "DoRA r=8": fine_tune(LoraConfig(r=8, lora_alpha=32, use_dora=True, target_modules="all-linear"))[1],
}
for label, row in variants.items():
    print(f"{label:12s} {row['params']:>8,} trainable, eval loss {row['eval_loss']:.3f}, "
          f"exact match {row['exact_match']:.0%}")
plt.figure(figsize=(5, 2.6))
plt.barh(list(variants)[::-1], [row["eval_loss"] for row in variants.values()][::-1])
plt.xlabel("held-out loss (lower is better)"); plt.tight_layout(); plt.show()

# %% [markdown]
# ## What ΔW looks like
#
# A LoRA of rank r changes each weight by a matrix of rank at most r. Its singular values
# (`analysis.delta_w_spectrum`) show how many directions it really uses: the paper finds
# that a few dominate even when r is large. The effective rank, `exp(entropy of σ / Σσ)`,
# counts them.

# %%
model64 = sweep[64][0]
deltas = {k: v for k, v in analysis.lora_delta_weights(model64).items() if k.endswith("attn.c_attn")}
spectrum = analysis.delta_w_spectrum(deltas)
display(analysis.plot_delta_w_spectrum(spectrum, top=64, title="ΔW of c_attn, LoRA r = 64"))
print("rank of each ΔW:", spectrum["rank"], " effective rank:", spectrum["effective_rank"].round(1))

# %% [markdown]
# ## Do r = 8 and r = 64 learn the same directions?
#
# The paper's Figure 3: φ(A₁, A₂, i, j) = ‖U₁ᵢᵀ U₂ⱼ‖²_F / min(i, j) compares the top-i right
# singular vectors of one run's A with the top-j of another's: 1 means one subspace contains
# the other, 0 that they are orthogonal. The paper finds that the top directions of r = 8 and
# r = 64 overlap strongly, which is why a small r suffices.
#
# Two things differ here. A starts *random* and, after 100 steps, is still mostly its random
# start, so its overlap stays near what chance gives. B starts at *zero*, so everything in it
# was learned: the same measure on the columns of B (pass `Bᵀ`, shape (r, out)) shows what
# the two runs agree on.

# %%
layer = 0
key = f"base_model.model.transformer.h.{layer}.attn.c_attn"
run8, run64 = sweep[8][0].trainable_parameters(), sweep[64][0].trainable_parameters()
A8, A64 = run8[f"{key}.lora_A.weight"], run64[f"{key}.lora_A.weight"]
B8, B64 = run8[f"{key}.lora_B.weight"], run64[f"{key}.lora_B.weight"]
for label, m1, m2 in (("A", A8, A64), ("Bᵀ", B8.T, B64.T)):
    print(f"φ({label} r=8, {label} r=64, 1, 1) = {analysis.subspace_similarity(m1, m2, 1, 1):.2f}")
# chance: two random directions in d dimensions have a squared cosine of 1/d on average
print(f"chance for i = j = 1: 1/C = {1 / A8.shape[1]:.3f} (A), 1/3C = {1 / B8.shape[0]:.3f} (Bᵀ)")
display(analysis.plot_subspace_similarity(A8, A64, max_j=16, labels=("A, r=8", "A, r=64"),
                                          title=f"A: layer {layer} c_attn (input directions)"))
display(analysis.plot_subspace_similarity(B8.T, B64.T, max_j=16, labels=("Bᵀ, r=8", "Bᵀ, r=64"),
                                          title=f"B: layer {layer} c_attn (output directions)"))

# %% [markdown]
# ## What to try next
#
# - `LoraConfig(target_modules=["c_attn"], enable_lora=[True, False, True])`: LoRA on the
#   query and value slices only, the paper's choice (loralib's `MergedLinear`).
# - Sweep α at fixed r: the paper's advice is that α and the learning rate play the same role.
# - `analysis.amplification_table(model)`: how much ΔW amplifies the directions of W it
#   touches (the paper's Table 7); `analysis.track_magnitude_direction` draws DoRA's Figure 2.
# - `init_lora_weights="pissa"`: start A and B from W₀'s principal directions.
# - Continue with **04 · Bottleneck adapters**.
