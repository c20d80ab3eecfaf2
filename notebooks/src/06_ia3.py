# %% [markdown]
# # 06 · IA3: rescaling activations
#
# (IA)³ (Liu et al. 2022, *Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
# than In-Context Learning*) learns one vector per adapted layer, and multiplies it into the
# activations, channel by channel:
#
# ```
# h = (x W + b) ⊙ l        output scaling: keys and values          l (out,)
# h = (x ⊙ l) W + b        input scaling: the feed-forward's inner activation   l (in,)
# ```
#
# The vectors start at 1, which is the base model exactly. It is the smallest of the
# methods here: no matrix at all. minipeft's IA3 overrides GPT-2's `_linear` hook
# (`minipeft/peft/ia3_model.py`, math in `minipeft/peft/ia3.py`).

# %%
# %matplotlib inline
import os

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from minipeft import GPT2, IA3Config, analysis, get_peft_model, load_tokenizer
from minipeft.testing import cmp

FAST = os.environ.get("MINIPEFT_FAST") == "1"   # the test suite sets it: the same cells, shorter training
STEPS = 5 if FAST else 250
BATCH = 4 if FAST else 16
N_EVAL = 8 if FAST else 50

tok = load_tokenizer("tiny-shakespeare")
eos = tok.token_to_id("<|endoftext|>")
base = GPT2.from_pretrained("tiny-shakespeare")
C, L = base.config.n_embd, base.config.n_layer

# %% [markdown]
# ## Two placements
#
# **peft's** default for GPT-2 scales the whole output of the fused `c_attn` (q, k and v:
# 3C) and the input of `mlp.c_proj` (4C). **The paper** scales keys, values and the
# feed-forward only; GPT-2 fuses q, k, v in one layer, so minipeft adds `c_attn_slices`, and
# `IA3Config.paper()` is the paper's placement.

# %%
for label, config in (("peft's default", IA3Config()), ("the paper's", IA3Config.paper())):
    pm = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"), config)
    print(f"{label}:")
    pm.print_trainable_parameters()
    for name, a in list(pm.trainable_parameters().items())[:3]:
        print(f"   {name.removeprefix('base_model.model.'):40s} {a.shape}")
print(f"formulas: L·(3C + 4C) = {L * 7 * C:,};  L·(2C + 4C) = {L * 6 * C:,}")

# %% [markdown]
# ## At 1, the base model; merged, the same model
#
# With every `l = 1` the logits are the base model's, bit for bit. Because `l` scales a
# linear layer's output (or input), it folds into the weights: `merge_and_unload()` gives a
# plain GPT-2 with the same outputs and no extra cost at inference.

# %%
ids = np.array([tok.encode("ROMEO: But soft, what light through yonder window breaks?").ids])
pm = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"), IA3Config())
cmp("l = 1: logits vs the base model", pm(ids), base(ids))
rng = np.random.default_rng(0)
for a in pm.trainable_parameters().values():                 # some non-trivial vectors
    a[...] = 1 + 0.3 * rng.standard_normal(a.shape)
scaled = pm(ids)
merged = pm.merge_and_unload()
print(type(merged).__name__, "with", len(merged.params), "tensors, as the base")
cmp("merged vs unmerged (float32 rounding)", merged(ids), scaled)

# %% [markdown]
# ## Training on the restaurant task
#
# IA3 has so few parameters that it wants a large learning rate: the paper uses 3e-3 with
# Adafactor on billions of parameters; on this small model the sweep of
# `benchmarks/compare_lr_sweep.py` picked 0.3.

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

runs = {}
for label, config in (("peft's", IA3Config()), ("paper's", IA3Config.paper())):
    model = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"), config)
    args = TrainingArguments(learning_rate=0.3, max_steps=STEPS, warmup_steps=max(1, STEPS // 20),
                             eval_steps=max(1, STEPS // 5))
    history = Trainer(model, args, example_batches(train_data, BATCH, seed=0),
                      eval_batches=eval_data, progress=False).train()
    result = score(greedy_completions(model, tok, prompts, 40, eos), eval_examples)
    runs[label] = (model, history)
    print(f"{label:8s} placement: eval loss {history[-1]['eval_loss']:.3f}, "
          f"exact match {result['exact_match']:.0%}, slot error {result['slot_error']:.0%}")

fig, ax = plt.subplots(figsize=(6, 3))
for label, (_, history) in runs.items():
    ev = [h for h in history if "eval_loss" in h]
    ax.plot([h["step"] for h in ev], [h["eval_loss"] for h in ev], "o-", label=f"{label} placement")
ax.set_yscale("log"); ax.set_xlabel("step"); ax.set_ylabel("held-out loss"); ax.legend(); plt.show()

model = runs["peft's"][0]
for prompt, text in zip(prompts[:3], greedy_completions(model, tok, prompts[:3], 40, eos)):
    print(prompt.splitlines()[0], "\n   ->", repr(text))

# %% [markdown]
# ## What the vectors learned
#
# `minipeft.analysis.plot_ia3_vectors`: one row per layer, one column per channel; white is
# 1 (unchanged), red amplifies, blue damps. The histogram shows how far from 1 they went.

# %%
display(analysis.plot_ia3_vectors(model, title="IA3 vectors after training (peft's placement)"))
summary = analysis.ia3_summary(model)
for label, change in zip(summary["labels"], summary["mean_abs_change"]):
    print(f"{label.removeprefix('transformer.'):32s} mean |l - 1| = {change:.3f}")

# %% [markdown]
# ## The same adapter in peft
#
# Saved in peft's format (`…c_attn.ia3_l` of shape (3C, 1), `…mlp.c_proj.ia3_l` of shape
# (1, 4C)), it loads in `peft` on the same base and gives the same logits. This cell runs
# only when torch, transformers and peft are installed.

# %%
folder = model.save_pretrained("out/ia3")
print(open(folder / "adapter_config.json").read()[:300], "...")
try:
    import peft
    import torch
    import transformers
except ImportError as e:
    print(f"skipped: {e.name} is not installed (pip install -e '.[test]' brings it)")
else:
    base_dir = base.save_pretrained("out/tiny-shakespeare", overwrite=True)
    theirs = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base_dir),
                                            folder).eval()
    with torch.no_grad():
        cmp("IA3, minipeft vs peft (float32)", model(ids), theirs(torch.as_tensor(ids)).logits.numpy(),
            tol=1e-4)

# %% [markdown]
# ## What to try next
#
# - `IA3Config(target_modules="all-linear", feedforward_modules=["mlp.c_fc"])`: more vectors,
#   other places. Does it help?
# - Lower the learning rate to 3e-2 or 3e-3: how far do the vectors move? Why do so few
#   parameters need a larger step?
# - Compare the trained vectors of the two placements with `analysis.ia3_summary`.
# - Continue with **07 · Comparing methods**, every method on one budget.
