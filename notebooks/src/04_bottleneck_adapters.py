# %% [markdown]
# # 04 · Bottleneck adapters
#
# The first PEFT method (Houlsby et al. 2019, *Parameter-Efficient Transfer Learning for
# NLP*): keep the transformer frozen and insert, after a sub-layer, a small MLP that
# squeezes the C-wide vector through m ≪ C units and adds the result back:
#
# ```
# f(h) = s · (act(h W_dᵀ + b_d) W_uᵀ + b_u)       W_d (m, C) down, W_u (C, m) up, m = C / reduction_factor
# ```
#
# Where it goes is the difference between the two classic layouts, both in AdapterHub
# (`adapters`), whose names minipeft uses:
#
# | preset | AdapterHub | where | per block |
# |---|---|---|---|
# | `"pfeiffer"` | `seq_bn` | after the MLP: `y = x + a + s·f(x + a)` | one adapter |
# | `"houlsby"` | `double_seq_bn` | after attention **and** the MLP: `y = x + a + s·f(a)` | two adapters |
# | `"parallel"` | `par_bn` | beside the MLP: `y = x + a + s·f(x)` (He et al. 2021) | one, wider |
#
# In minipeft the adapter enters at one hook of GPT-2, the residual addition `_residual`
# (`minipeft/peft/bottleneck_model.py`); its math is `minipeft/peft/bottleneck.py`.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minipeft import GPT2, BottleneckConfig, get_peft_model, load_tokenizer
from minipeft.testing import cmp

FAST = os.environ.get("MINIPEFT_FAST") == "1"   # the test suite sets it: the same cells, shorter training
STEPS = 5 if FAST else 250
BATCH = 4 if FAST else 16
N_EVAL = 8 if FAST else 50

base = GPT2.from_pretrained("tiny-shakespeare")
tok = load_tokenizer("tiny-shakespeare")
eos = tok.token_to_id("<|endoftext|>")
C, L = base.config.n_embd, base.config.n_layer

# %% [markdown]
# ## What trains
#
# A Pfeiffer adapter with reduction factor 16 on the bundled model (C = 128) has a
# bottleneck of m = 8: per block `2·C·m + m + C` numbers.

# %%
pm = get_peft_model(base, BottleneckConfig(preset="pfeiffer", reduction_factor=16))
pm.print_trainable_parameters()
for name, a in list(pm.trainable_parameters().items())[:4]:
    print(f"{name:72s} {a.shape}")
m = C // 16
print(f"formula: L·(2Cm + m + C) = {L * (2 * C * m + m + C):,}")

# %% [markdown]
# How the count grows with the bottleneck, here and at GPT-2 small's shape (L = 12,
# C = 768), for the three presets (Houlsby has two adapters per block):

# %%
def count(L, C, rf, places):
    m = int(C // rf)
    return places * L * (2 * C * m + m + C)

rfs = [64, 32, 16, 8, 4, 2]
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, (L_, C_, total, title) in zip(axes, [(L, C, base.num_parameters(), "bundled model"),
                                             (12, 768, 124_439_808, "GPT-2 small (124M)")]):
    for preset, places in (("pfeiffer", 1), ("houlsby", 2)):
        ax.plot(rfs, [100 * count(L_, C_, rf, places) / total for rf in rfs], "o-", label=preset)
    ax.set_xscale("log", base=2); ax.invert_xaxis()
    ax.set_xlabel("reduction factor (C / m)"); ax.set_ylabel("trainable, % of the model")
    ax.set_title(title); ax.legend(); ax.grid(alpha=0.3)
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Near the base model at the start
#
# An adapter should start as (almost) the identity, so that training begins from the
# pretrained model. AdapterHub's default `init_weights="bert"` draws both projections
# with std 0.02: close to the base, not equal. `"mam_adapter"` sets the up-projection
# to zero, which gives the base model **exactly**.

# %%
ids = np.array([tok.encode("ROMEO: But soft, what light through yonder window breaks?").ids])
reference = base(ids)
for init in ("bert", "mam_adapter"):
    m_ = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"),
                        BottleneckConfig(preset="pfeiffer", init_weights=init))
    cmp(f"init_weights={init!r}: logits vs the base model", m_(ids), reference)
with pm.disable_adapter():
    cmp("disable_adapter(): logits vs the base model", pm(ids), reference)

# %% [markdown]
# ## Training on the restaurant task
#
# The task of the quick tour: write one sentence from a restaurant's attributes. We train
# a Pfeiffer and a Houlsby adapter with the same budget.

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

def fine_tune(config, lr=3e-2):          # the learning rate benchmarks/compare_lr_sweep.py picked
    model = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"), config)
    args = TrainingArguments(learning_rate=lr, max_steps=STEPS, warmup_steps=max(1, STEPS // 20),
                             eval_steps=max(1, STEPS // 5))
    history = Trainer(model, args, example_batches(train_data, BATCH, seed=0),
                      eval_batches=eval_data, progress=False).train()
    result = score(greedy_completions(model, tok, prompts, 40, eos), eval_examples)
    return model, history, result

runs = {}
for preset in ("pfeiffer", "houlsby"):
    runs[preset] = fine_tune(BottleneckConfig(preset=preset, reduction_factor=16))
    model, history, result = runs[preset]
    print(f"{preset:9s} {sum(a.size for a in model.trainable_parameters().values()):>7,} trainable: "
          f"eval loss {history[-1]['eval_loss']:.3f}, exact match {result['exact_match']:.0%}, "
          f"slot error {result['slot_error']:.0%}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
for preset, (_, history, _) in runs.items():
    ev = [h for h in history if "eval_loss" in h]
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], alpha=0.4)
    ax.plot([h["step"] for h in ev], [h["eval_loss"] for h in ev], "o-", label=f"{preset} (held out)")
ax.set_yscale("log"); ax.set_xlabel("step"); ax.set_ylabel("loss"); ax.legend()
plt.show()

pfeiffer = runs["pfeiffer"][0]
for prompt, text in zip(prompts[:3], greedy_completions(pfeiffer, tok, prompts[:3], 40, eos)):
    print(prompt.splitlines()[0], "\n   ->", repr(text))

# %% [markdown]
# ## Where the adapters act
#
# Run the same input with the adapter and without (`disable_adapter()`), and measure how
# far each block's output moved: `‖h_adapter − h_base‖ / ‖h_base‖`. The forward's cache
# keeps every block's output (`hidden_states`).

# %%
batch = np.array([tok.encode(prompts[0]).ids])
fig, ax = plt.subplots(figsize=(6, 3))
for k, (preset, (model, _, _)) in enumerate(runs.items()):
    _, with_adapter = model.forward(batch)
    with model.disable_adapter():
        _, without = model.forward(batch)
    moved = [np.linalg.norm(a - b) / np.linalg.norm(b)
             for a, b in zip(with_adapter["hidden_states"][1:], without["hidden_states"][1:])]
    ax.bar(np.arange(L) + 0.4 * k - 0.2, moved, 0.4, label=preset)
ax.set_xticks(range(L), [f"block {i}" for i in range(L)])
ax.set_ylabel("relative change of the output"); ax.legend(); plt.show()

# %% [markdown]
# Each block's output carries its own adapter's correction and those of the blocks before
# it: a bar measures the adapters up to that block together.
#
# ## The same adapter in AdapterHub
#
# minipeft saves AdapterHub's tensors under AdapterHub's names (without
# `.adapters.<name>`, behind peft's `base_model.model.` prefix). Copied into AdapterHub's
# GPT-2, they must give the same logits. This cell runs only when torch, transformers and
# `adapters` are installed.

# %%
folder = pfeiffer.save_pretrained("out/pfeiffer")
print(sorted(p.name for p in folder.iterdir()))
try:
    import adapters
    import torch
    import transformers
except ImportError as e:
    print(f"skipped: {e.name} is not installed (pip install -e '.[test]' brings it)")
else:
    base_dir = base.save_pretrained("out/tiny-shakespeare", overwrite=True)
    hub = transformers.GPT2LMHeadModel.from_pretrained(base_dir)
    adapters.init(hub)
    hub.add_adapter("default", config=adapters.SeqBnConfig(reduction_factor=16))
    hub.set_active_adapters("default")
    ours = pfeiffer.trainable_parameters()
    with torch.no_grad():
        for name, p in hub.named_parameters():
            if ".adapters.default." in name:
                p.copy_(torch.from_numpy(ours["base_model.model." + name.replace(".adapters.default.", ".")]))
        theirs = hub.eval()(torch.as_tensor(batch)).logits.numpy()
    cmp("logits, minipeft vs AdapterHub (float32)", pfeiffer(batch), theirs, tol=1e-4)

# %% [markdown]
# ## What to try next
#
# - `BottleneckConfig(preset="parallel")`, or `non_linearity="gelu_new"`, or a `reduction_factor`
#   of 4 or 64: which gives the best exact match for its parameter count?
# - `leave_out=[0, 1]` puts adapters in the last blocks only. Does the plot above suggest
#   that costs much?
# - `scaling="learned"` trains the scale s too.
# - Continue with **05 · Prefix and prompt tuning**, which change the input of attention
#   instead of adding layers.
