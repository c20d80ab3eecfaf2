# %% [markdown]
# # 08 · Real GPT-2
#
# Everything so far ran on the small GPT-2 bundled with minipeft. The same code runs on
# OpenAI's GPT-2 (124M, medium, large, xl) and distilgpt2. There are two ways to get the
# weights:
#
# 1. **Online**: `GPT2.from_pretrained("gpt2")` downloads the Hugging Face folder once
#    (`pip install -e ".[hub]"` brings `huggingface_hub`), converts it into `weights/gpt2/`,
#    and works offline from then on.
# 2. **From a copied folder**: any Hugging Face GPT-2 folder (`config.json` +
#    `model.safetensors` or `pytorch_model.bin`), copied from a machine with network,
#    converted once with `minipeft convert SRC DST` (or `minipeft.convert_checkpoint`).
#
# This notebook runs offline: it shows what the hub says without network, then builds a
# GPT-2 of the real 124M shape with random weights in `transformers` (when installed) and
# takes it through route 2.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from minipeft import GPT2, LoraConfig, MinipeftError, convert_checkpoint, get_peft_model, load_tokenizer
from minipeft.testing import cmp

USE_HUB = False        # True: download GPT-2 (about 500 MB) when this machine has network
FAST = os.environ.get("MINIPEFT_FAST") == "1"   # the test suite sets it: one timed step, not three
REPEATS = 1 if FAST else 3

# %% [markdown]
# ## 1. The hub name
#
# With `USE_HUB = False` the cell below asks for `"gpt2"` as an offline machine would
# (`HF_HUB_OFFLINE=1`), to show the message you get there: what to download, and the
# `minipeft convert` line to run. If `weights/gpt2/` already holds a converted copy, it
# simply loads.

# %%
saved = os.environ.get("HF_HUB_OFFLINE")
if not USE_HUB:
    os.environ["HF_HUB_OFFLINE"] = "1"
try:
    real = GPT2.from_pretrained("gpt2")
    print(f"loaded GPT-2: {real.num_parameters():,} parameters")
except MinipeftError as e:
    real = None
    print(f"{type(e).__name__}: {e}")
finally:
    if saved is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = saved

# %% [markdown]
# GPT-2's tokenizer is its own (50,257 tokens, not the bundled model's 2,048). minipeft
# ships it, so `load_tokenizer("gpt2")` works offline:

# %%
try:
    gpt2_tok = load_tokenizer("gpt2")
    enc = gpt2_tok.encode("Hello, PEFT!")
    print(enc.tokens, enc.ids)
except MinipeftError as e:
    gpt2_tok = None
    print(f"{type(e).__name__}: {e}")

# %% [markdown]
# ## 2. A copied Hugging Face folder, converted
#
# Offline we make such a folder ourselves: `transformers`' `GPT2LMHeadModel` with the default
# `GPT2Config()`, which is GPT-2 small's shape with random weights. (With the real folder
# copied from elsewhere, the steps are the same.) This part needs torch and transformers;
# without them it says so and the rest of the notebook is skipped.

# %%
try:
    import torch
    import transformers
except ImportError as e:
    transformers = None
    print(f"skipped: {e.name} is not installed (pip install -e '.[test]' brings it)")
else:
    start = time.perf_counter()
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    hf.save_pretrained("out/hf-gpt2")                       # a Hugging Face GPT-2 folder
    print(f"made out/hf-gpt2 ({time.perf_counter() - start:.0f} s):",
          sorted(p.name for p in os.scandir("out/hf-gpt2")))

# %% [markdown]
# `convert_checkpoint(SRC, DST)` (the command line: `minipeft convert out/hf-gpt2
# out/my-gpt2`) checks every shape against the config and writes float32 safetensors with
# `GPT2LMHeadModel`'s names; DST is itself a Hugging Face folder. `GPT2.from_pretrained` also
# takes SRC directly and converts in memory.

# %%
if transformers is not None:
    start = time.perf_counter()
    folder = convert_checkpoint("out/hf-gpt2", "out/my-gpt2", overwrite=True)
    model = GPT2.from_pretrained(folder)
    print(f"converted and loaded in {time.perf_counter() - start:.0f} s: "
          f"{model.num_parameters():,} parameters, {model.config}")

# %% [markdown]
# ## The same LoRA, the same checks
#
# peft's example config gives peft's famous line, and the logits equal `transformers`' on
# the same weights.

# %%
if transformers is not None:
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["c_attn"],
                                          lora_dropout=0.1))
    pm.print_trainable_parameters()
    ids = np.array([gpt2_tok.encode("Hello, PEFT!").ids if gpt2_tok else [15496, 11, 18468, 9792, 0]])
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids)).logits.numpy()
    # at B = 0 the adapter adds exactly nothing: the base's logits
    cmp("124M logits, minipeft + LoRA at init vs transformers (float32)", pm(ids), theirs, tol=1e-4)

# %% [markdown]
# ## What changes at full size
#
# The code does not change; the costs do. One LoRA training step (forward + backward +
# AdamW) on a batch of 4 × 64 tokens, on the bundled model and on the 124M shape:

# %%
from minipeft.train.optim import AdamW


def step_seconds(model, T=64, B=4, repeats=REPEATS):
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["c_attn"],
                                          fan_in_fan_out=True))
    opt = AdamW(pm.trainable_parameters(), lr=1e-4)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(B, T))
    pm.loss_and_grads(ids[:1, :8], labels=ids[:1, :8])          # warm-up: Numba loads its kernels
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        loss, grads = pm.loss_and_grads(ids, labels=ids)
        opt.step(grads)
        best = min(best, time.perf_counter() - start)
    return best

if transformers is not None:
    sizes = {"bundled (1.1M)": GPT2.from_pretrained("tiny-shakespeare"), "GPT-2 shape (124M)": model}
    seconds = {k: step_seconds(m) for k, m in sizes.items()}
    megabytes = {k: sum(p.nbytes for p in m.params.values()) / 2**20 for k, m in sizes.items()}
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.6))
    axes[0].bar(list(seconds), list(seconds.values())); axes[0].set_ylabel("s per LoRA step (4×64 tokens)")
    axes[1].bar(list(megabytes), list(megabytes.values())); axes[1].set_ylabel("MiB of float32 weights")
    for ax in axes:
        ax.set_yscale("log")
    plt.tight_layout(); plt.show()
    for k in sizes:
        print(f"{k:20s} {seconds[k]:6.2f} s/step   {megabytes[k]:7.1f} MiB")

# %% [markdown]
# What else changes with real GPT-2:
#
# - **The tokenizer**: GPT-2's own 50,257-token BPE (`load_tokenizer("gpt2")`, or the one in
#   the folder). Ids of the bundled tokenizer mean nothing to GPT-2 and the other way round;
#   minipeft refuses ids outside a model's vocabulary.
# - **Context**: `n_positions` is 1,024 instead of 128.
# - **Time and memory**: every step is ~100 × the bundled model's work; on a laptop CPU
#   fine-tuning 124M takes minutes per hundred steps, not seconds (`minipeft bench` measures
#   it against torch). Larger sizes grow fast: medium is 355M, xl 1.5B parameters.
# - **Learning rates**: LoRA on a pretrained 124M usually wants ~1e-4 – 1e-3, not the 1e-2
#   that the tiny model takes.
# - **Results**: real GPT-2 already writes English, so the restaurant task needs far fewer
#   steps, and the comparisons between methods look more like the papers'.

# %% [markdown]
# ## What to try next
#
# - With network: `USE_HUB = True`, then `real.generate(...)` on a prompt of your own.
# - `minipeft finetune` on the command line trains on your own JSONL file with any of these
#   models (`minipeft finetune --help`).
# - Load `out/my-gpt2` in `transformers` (`GPT2LMHeadModel.from_pretrained("out/my-gpt2")`):
#   the converted folder is a Hugging Face folder.
