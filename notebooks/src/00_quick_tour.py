# %% [markdown]
# # 00 · A quick tour of minipeft
#
# minipeft is parameter-efficient fine-tuning (PEFT) of GPT-2 written from scratch in
# NumPy, with the names and the file format of Hugging Face's `peft`. In ten minutes this
# notebook shows the whole path:
#
# 1. **peft's LoRA example, line for line**, on a model of GPT-2's real shape (124M parameters);
# 2. **a short LoRA fine-tuning** of the small GPT-2 that ships with minipeft, with what it
#    writes before and after;
# 3. **the same adapter loaded by `peft`**, with the logits compared (only when torch, transformers
#    and peft are installed).
#
# Everything runs offline. The first call of a model loads minipeft's Numba kernels; on a
# fresh machine Numba compiles them once (about ten seconds) and caches them for later runs.

# %%
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np

import minipeft
from minipeft import GPT2, GPT2Config, LoraConfig, MinipeftError, get_peft_model, load_tokenizer

FAST = os.environ.get("MINIPEFT_FAST") == "1"   # the test suite sets it: the same cells, shorter training
STEPS = 5 if FAST else 300
BATCH = 4 if FAST else 16
N_EVAL = 8 if FAST else 50
print(f"minipeft {minipeft.__version__}; training for {STEPS} steps" + (" (fast mode)" if FAST else ""))

# %% [markdown]
# ## 1. peft's LoRA example, line for line
#
# This is the example of peft's documentation, with `minipeft` in place of `peft`.
# Real GPT-2 weights come from the Hugging Face hub (notebook 08 shows how); offline, we
# build a model of the same shape with GPT-2's random initialisation. The *shape* is all
# this part needs: the names, the counts and the logits' shape are those of real GPT-2.

# %%
from minipeft.train.pretrain import init_params

config = GPT2Config()                                # GPT-2 small: 12 layers, 12 heads, C = 768
model = GPT2(config, init_params(config, seed=0))    # random weights of the real shape

lora_config = LoraConfig(r=8, lora_alpha=32, target_modules=["c_attn"], lora_dropout=0.1)
peft_model = get_peft_model(model, lora_config)      # warns, as peft does: fan_in_fan_out set for Conv1D
peft_model.print_trainable_parameters()

# %% [markdown]
# Only LoRA's two small matrices per layer train; the 124M weights of the base stay frozen.
# Their names are the keys of the file peft saves, so the two libraries read each other's
# adapters:

# %%
for name, array in list(peft_model.trainable_parameters().items())[:4]:
    print(f"{name:62s} {array.shape}")
print(f"... {len(peft_model.trainable_parameters())} tensors: "
      "A (r, in) and B (out, r) for each of the 12 c_attn")

# %% [markdown]
# "Hello, PEFT!" is five tokens in GPT-2's vocabulary. The logits have one row of 50,257
# scores (one per vocabulary entry) per token:

# %%
try:
    ids = np.array([load_tokenizer("gpt2").encode("Hello, PEFT!").ids])
except MinipeftError as e:                           # GPT-2's tokenizer is not on this machine
    print(f"({e})\nUsing the ids GPT-2's tokenizer gives:")
    ids = np.array([[15496, 11, 18468, 9792, 0]])
print("ids:", ids.tolist())
logits = peft_model(ids)
print("logits:", logits.shape)                       # (batch, tokens, vocabulary)

# %%
del model, peft_model, logits                        # 0.5 GB: make room for the rest

# %% [markdown]
# ## 2. Fine-tuning the bundled GPT-2 with LoRA
#
# minipeft ships a small GPT-2 (4 layers, C = 128, 1.07 M parameters) pretrained on
# Shakespeare's plays by `minipeft pretrain`, with its own 2,048-token vocabulary. It writes
# pseudo-Shakespeare. The task we give it: describe a restaurant in one sentence from its
# attributes, as in the E2E data on which the LoRA paper fine-tunes GPT-2.

# %%
from minipeft.demo import greedy_completions, one_line
from minipeft.tasks.restaurants import make_examples, score

base = GPT2.from_pretrained("tiny-shakespeare")
tok = load_tokenizer("tiny-shakespeare")
eos = tok.token_to_id("<|endoftext|>")

train_examples = make_examples(2000, seed=0)
eval_examples = make_examples(N_EVAL, seed=1)
print(train_examples[0]["prompt"] + train_examples[0]["completion"])
print(f"\n{base.num_parameters():,} parameters; {len(train_examples)} training examples, "
      f"{len(eval_examples)} held out")

# %% [markdown]
# Before any training, the model answers in the only language it knows:

# %%
prompts = [e["prompt"] for e in eval_examples]
before = greedy_completions(base, tok, prompts, max_new_tokens=40, eos_id=eos)
for e, text in list(zip(eval_examples, before))[:3]:
    print(e["prompt"].splitlines()[0], "\n   ->", repr(text))
score_before = score(before, eval_examples)
print(f"exact match {score_before['exact_match']:.0%}, slot error {score_before['slot_error']:.0%}")

# %% [markdown]
# Now the adapter: LoRA of rank 16 on every linear layer. `Trainer` is minipeft's loop
# (AdamW, warm-up then linear decay, clipping, as transformers' `Trainer`); the loss counts
# only the answer's tokens, not the prompt's.

# %%
from minipeft.train.data import batches, encode_examples
from minipeft.train.trainer import Trainer, TrainingArguments, example_batches

with warnings.catch_warnings():
    warnings.simplefilter("ignore")                  # the fan_in_fan_out note, seen above
    pm = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                         target_modules="all-linear"))
pm.print_trainable_parameters()

n_pos = base.config.n_positions
train_data = encode_examples(one_line(train_examples), tok, n_pos, eos)
eval_data = batches(encode_examples(one_line(eval_examples), tok, n_pos, eos), 16, seed=0, epoch=0)
args = TrainingArguments(learning_rate=1e-2, max_steps=STEPS, warmup_steps=max(1, STEPS // 20),
                         eval_steps=max(1, STEPS // 6))
history = Trainer(pm, args, example_batches(train_data, BATCH, seed=0), eval_batches=eval_data).train()

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="training loss")
evals = [h for h in history if "eval_loss" in h]
ax.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="held-out loss")
ax.set_xlabel("optimizer step"); ax.set_ylabel("cross-entropy (nats / token)")
ax.set_yscale("log"); ax.legend(); ax.set_title("LoRA on the restaurant task")
plt.show()

# %% [markdown]
# The same prompts after training. The base weights did not change: only the adapter did.

# %%
after = greedy_completions(pm, tok, prompts, max_new_tokens=40, eos_id=eos)
for e, text in list(zip(eval_examples, after))[:3]:
    print(e["prompt"].splitlines()[0], "\n   ->", repr(text))
score_after = score(after, eval_examples)
print(f"exact match {score_after['exact_match']:.0%}, slot error {score_after['slot_error']:.0%}")

fig, ax = plt.subplots(figsize=(5, 2.8))
x = np.arange(2)
ax.bar(x - 0.2, [score_before["exact_match"], score_before["slot_error"]], 0.4, label="before")
ax.bar(x + 0.2, [score_after["exact_match"], score_after["slot_error"]], 0.4, label="after LoRA")
ax.set_xticks(x, ["exact match (higher is better)", "slot error (lower is better)"])
ax.set_ylim(0, 1); ax.legend(); plt.show()

# %% [markdown]
# ## 3. The adapter is peft's
#
# `save_pretrained` writes peft's two files. The bundled model, saved by minipeft, is also a
# Hugging Face GPT-2 folder. So `transformers` + `peft` can load both, and must compute the
# same logits. This cell runs only when torch, transformers and peft are installed
# (`pip install -e ".[test]"`); without them it says so and skips.

# %%
from minipeft.testing import cmp

adapter_dir = pm.save_pretrained("out/quick-tour-lora")
base_dir = base.save_pretrained("out/tiny-shakespeare", overwrite=True)
print(sorted(p.name for p in adapter_dir.iterdir()))

try:
    import peft
    import torch
    import transformers
except ImportError as e:
    print(f"skipped: {e.name} is not installed (pip install -e '.[test]' brings torch, transformers, peft)")
else:
    hf_base = transformers.GPT2LMHeadModel.from_pretrained(base_dir)
    hf_peft = peft.PeftModel.from_pretrained(hf_base, adapter_dir).eval()
    ids = np.array([tok.encode(prompts[0]).ids])
    with torch.no_grad():
        theirs = hf_peft(torch.as_tensor(ids)).logits.numpy()
    # float32 sums taken in another order: equal to ~1e-6 relative, 1e-4 is the project's bar
    cmp("logits, minipeft vs peft", pm(ids), theirs, tol=1e-4)

# %% [markdown]
# ## What to try next
#
# - `minipeft demo` on the command line runs part 2 with a progress bar and saves the run.
# - Change `r`, `lora_alpha` or `target_modules=["c_attn"]` in part 2: how many parameters,
#   and how good is the result? (Notebook 03 sweeps the rank.)
# - Open the files in `out/quick-tour-lora/`: `adapter_config.json` is peft's config, word for word.
# - Continue with **01 · GPT-2 in NumPy**, the model this all runs on, op by op.
