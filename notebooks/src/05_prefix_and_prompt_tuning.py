# %% [markdown]
# # 05 · Prefix tuning and prompt tuning
#
# Two methods that leave every weight alone and change what the model *reads*:
#
# - **Prompt tuning** (Lester et al. 2021): P trainable vectors are put in front of the input
#   embeddings, as if the model read P extra tokens that no vocabulary has.
#   `x = concat(prompt, wte[ids]) + wpe[pos]`, prompt (P, C).
# - **Prefix tuning** (Li & Liang 2021): every layer gets P trainable keys and values that
#   each token attends to before its own context. `K = [K_prefix ; X W_k]`,
#   `V = [V_prefix ; X W_v]`, a prefix (P, 2·L·C) for L layers.
#
# Prompt tuning touches only the input; prefix tuning reaches every layer's attention. In
# minipeft they enter GPT-2 at the embedding hook (`_embed`) and through the KV cache
# (`past_key_values`) respectively: `minipeft/peft/prompt_model.py`, `prefix_model.py`.

# %%
# %matplotlib inline
import os

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from minipeft import GPT2, PrefixTuningConfig, PromptTuningConfig, analysis, get_peft_model, load_tokenizer
from minipeft.testing import cmp

FAST = os.environ.get("MINIPEFT_FAST") == "1"   # the test suite sets it: the same cells, shorter training
STEPS = 5 if FAST else 200
BATCH = 4 if FAST else 16
N_EVAL = 8 if FAST else 50

tok = load_tokenizer("tiny-shakespeare")
eos = tok.token_to_id("<|endoftext|>")
base = GPT2.from_pretrained("tiny-shakespeare")
cfg = base.config
P = 10

# %% [markdown]
# ## What trains
#
# Prompt tuning: P·C numbers. Prefix tuning: P·2LC, a key and a value per layer and
# virtual token; with `prefix_projection=True` they come out of a small MLP during
# training (the paper's reparametrisation, which makes optimisation steadier), and only
# its output is saved.

# %%
for label, config in (("prompt tuning", PromptTuningConfig(num_virtual_tokens=P)),
                      ("prefix tuning, flat", PrefixTuningConfig(num_virtual_tokens=P)),
                      ("prefix tuning, with the MLP",
                       PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=True))):
    pm = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"), config)
    print(f"{label}:")
    pm.print_trainable_parameters()
    for k, v in pm.trainable_parameters().items():
        print(f"   {k:40s} {v.shape}")
print(f"formulas: P·C = {P * cfg.n_embd:,}, P·2LC = {P * 2 * cfg.n_layer * cfg.n_embd:,}")

# %% [markdown]
# ## Two conventions for positions
#
# Where do the real tokens sit once P virtual ones come first? **peft** treats the prefix as
# a KV cache of P tokens already seen, so the real tokens take positions P … P+T−1 (and
# P + T must fit in `n_positions`). **AdapterHub** adds the prefix inside attention and keeps
# positions 0 … T−1. Both are in minipeft (`convention="peft"` or `"adapters"`); the
# forward's cache says which positions the embedding used. Prompt tuning, in peft, puts the
# virtual tokens at 0 … P−1 and the real ones after them.

# %%
ids = np.array([tok.encode("ROMEO: But soft, what light through yonder window breaks?").ids])
T = ids.shape[1]

def real_positions(model):
    """The position ids the embedding used for the real tokens, read from the forward's cache."""
    _, cache = model.forward(ids)
    return np.broadcast_to(cache["embedding"][1], ids.shape)[0]

adapters_style = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"),
                                PrefixTuningConfig(num_virtual_tokens=P, convention="adapters"))
peft_style = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"),
                            PrefixTuningConfig(num_virtual_tokens=P))
rows = {                                   # label: (virtual token positions, real token positions)
    "base model": ([], real_positions(base)),
    "prefix, convention='adapters'": ([], real_positions(adapters_style)),
    "prefix, convention='peft'": (range(P), real_positions(peft_style)),
    "prompt tuning (peft)": (range(P), np.arange(P, P + T)),   # virtual 0..P-1, then the real tokens
}
fig, ax = plt.subplots(figsize=(7, 2.4))
for k, (virtual, real) in enumerate(rows.values()):
    ax.scatter(list(virtual), [k] * len(virtual), marker="s", s=16, color="tab:orange")
    ax.scatter(real, [k] * len(real), s=16, color="tab:blue")
ax.set_yticks(range(len(rows)), list(rows))
ax.set_xlabel("position id (orange: the P virtual tokens, blue: the real tokens)")
plt.tight_layout(); plt.show()
for label, (_, real) in rows.items():
    print(f"{label:30s} real tokens at positions {real[0]} .. {real[-1]}")
print("logits, 'peft' vs 'adapters' convention, same prefix values:")
adapters_style.trainable_parameters()[next(iter(adapters_style.trainable_parameters()))][...] = \
    next(iter(peft_style.trainable_parameters().values()))
cmp("  differ by", adapters_style(ids), peft_style(ids))

# %% [markdown]
# ## Training both on the restaurant task
#
# With the learning rates that `benchmarks/compare_lr_sweep.py` picked for each on this task
# (a few virtual tokens need large steps: 0.3 for prompt tuning).

# %%
from minipeft.demo import greedy_completions, one_line
from minipeft.tasks.restaurants import make_examples, score
from minipeft.train.data import batches, encode_examples
from minipeft.train.trainer import Trainer, TrainingArguments, example_batches

train_examples, eval_examples = make_examples(2000, seed=0), make_examples(N_EVAL, seed=1)
limit = cfg.n_positions - P            # peft's convention: the prefix takes P positions
train_data = encode_examples(one_line(train_examples), tok, limit, eos)
eval_data = batches(encode_examples(one_line(eval_examples), tok, limit, eos), 16, seed=0, epoch=0)
prompts = [e["prompt"] for e in eval_examples]

def fine_tune(config, lr):
    model = get_peft_model(GPT2.from_pretrained("tiny-shakespeare"), config)
    args = TrainingArguments(learning_rate=lr, max_steps=STEPS, warmup_steps=max(1, STEPS // 20),
                             eval_steps=max(1, STEPS // 5))
    history = Trainer(model, args, example_batches(train_data, BATCH, seed=0),
                      eval_batches=eval_data, progress=False).train()
    result = score(greedy_completions(model, tok, prompts, 40, eos), eval_examples)
    print(f"{type(config).__name__:20s} eval loss {history[-1]['eval_loss']:.3f}, "
          f"exact match {result['exact_match']:.0%}, slot error {result['slot_error']:.0%}")
    return model, history

prefix_model, prefix_history = fine_tune(
    PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=True), lr=3e-2)
prompt_model, prompt_history = fine_tune(
    PromptTuningConfig(num_virtual_tokens=P, prompt_tuning_init="TEXT",
                       prompt_tuning_init_text="Describe the restaurant in one sentence:",
                       tokenizer_name_or_path="tiny-shakespeare"), lr=0.3)

fig, ax = plt.subplots(figsize=(6, 3))
for label, history in (("prefix", prefix_history), ("prompt", prompt_history)):
    ev = [h for h in history if "eval_loss" in h]
    ax.plot([h["step"] for h in ev], [h["eval_loss"] for h in ev], "o-", label=f"{label} tuning")
ax.set_yscale("log"); ax.set_xlabel("step"); ax.set_ylabel("held-out loss"); ax.legend(); plt.show()

# %% [markdown]
# Prompt tuning started from the embeddings of a real sentence (`prompt_tuning_init="TEXT"`),
# which helps a small model. Both are far weaker than LoRA at this size: the prompt-tuning
# paper shows the gap closing only for models of billions of parameters.

# %%
for prompt, a, b in zip(prompts[:3], greedy_completions(prefix_model, tok, prompts[:3], 40, eos),
                        greedy_completions(prompt_model, tok, prompts[:3], 40, eos)):
    print(prompt.splitlines()[0], f"\n   prefix -> {a!r}\n   prompt -> {b!r}")

# %% [markdown]
# ## Where attention goes
#
# Each token now attends over P prefix keys plus its causal context. One head of the last
# layer: the columns left of the line are the prefix.

# %%
enc = tok.encode(prompts[0])
batch = np.array([enc.ids])
_, cache = prefix_model.forward(batch)
p = cache["layers"][-1]["attn"][3][0]                   # (NH, T, P + T) attention probabilities
labels = enc.tokens
fig, ax = plt.subplots(figsize=(10, 7))
ax.imshow(p[0], cmap="viridis", vmin=0, vmax=1, aspect="auto")
ax.axvline(P - 0.5, color="w", lw=1.5)
ax.set_xticks(range(P + len(labels)), [f"p{j}" for j in range(P)] + labels, rotation=90, fontsize=6)
ax.set_yticks(range(len(labels)), labels, fontsize=6)
ax.set_title(f"layer {cfg.n_layer - 1}, head 0: rows attend over prefix | tokens")
plt.tight_layout(); plt.show()

# %% [markdown]
# `minipeft.analysis.prefix_attention_share` averages the share of attention given to the
# prefix over the real tokens, for every layer and head:

# %%
share = analysis.prefix_attention_share(prefix_model, batch)
display(analysis.plot_prefix_attention_share(share, title="trained prefix: share of attention"))

# %% [markdown]
# ## The same adapters in peft
#
# Saved in peft's format (`prompt_embeddings`, the MLP's output for a prefix with
# projection), both load in `peft` on the same base and give the same logits. This cell runs
# only when torch, transformers and peft are installed.

# %%
prefix_dir = prefix_model.save_pretrained("out/prefix")
prompt_dir = prompt_model.save_pretrained("out/prompt")
try:
    import peft
    import torch
    import transformers
except ImportError as e:
    print(f"skipped: {e.name} is not installed (pip install -e '.[test]' brings it)")
else:
    base_dir = base.save_pretrained("out/tiny-shakespeare", overwrite=True)
    for name, ours, folder in (("prefix", prefix_model, prefix_dir), ("prompt", prompt_model, prompt_dir)):
        theirs = peft.PeftModel.from_pretrained(
            transformers.GPT2LMHeadModel.from_pretrained(base_dir), folder).eval()
        with torch.no_grad():
            logits = theirs(torch.as_tensor(batch)).logits.numpy()
        logits = logits[:, -batch.shape[1]:]            # peft's prompt tuning returns P + T positions
        cmp(f"{name} tuning, minipeft vs peft (float32)", ours(batch), logits, tol=1e-4)

# %% [markdown]
# ## What to try next
#
# - Train the prefix without `prefix_projection`: the flat prefix is the paper's ablation.
# - `convention="adapters"` with the same budget: does keeping positions 0 … T−1 matter?
# - Vary P (5, 20, 40) for both methods and plot the held-out loss against P.
# - Continue with **06 · IA3**, which rescales activations with even fewer parameters.
