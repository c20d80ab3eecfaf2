# %% [markdown]
# # 07 · Comparing the methods
#
# Which method, at what cost? The LoRA paper answers with one table: GPT-2 Medium
# fine-tuned on the E2E restaurant data with full fine-tuning, adapters, prefix tuning and
# LoRA. `minipeft compare` (and `minipeft.compare.run` from Python) is that table in
# miniature, offline: the bundled GPT-2 learns the restaurant task with every method in
# turn, all with **one budget**: the same steps, batch, examples and order, seed, schedule
# and clipping. Only the learning rate differs, each method's own, chosen by a sweep on a
# validation split (`benchmarks/compare_lr_sweep.py`), never on the examples scored here.

# %%
# %matplotlib inline
import os

import matplotlib.pyplot as plt
from IPython.display import display

from minipeft import compare

FAST = os.environ.get("MINIPEFT_FAST") == "1"   # the test suite sets it: compare's --quick set-up
STEPS = 2 if FAST else 100                       # per method; `minipeft compare` runs 250 by default
print("methods:", ", ".join(compare.METHODS))
for name, (label, what, _) in compare.method_configs().items():
    print(f"  {name:9s} {label:18s} {what}")

# %% [markdown]
# ## The run
#
# Nine methods and the untrained base model; about two and a half minutes on a 2-core
# laptop at 100 steps each (`quick=True`, which the test suite uses with 2 steps, is a
# smaller set-up). It writes `results.json`, `results.csv`, `compare.png` and every adapter
# in peft's format under `out/compare/`, and prints the table.

# %%
rows = compare.run(steps=STEPS, quick=FAST, out="out/compare", overwrite=True,
                   progress=False)

# %% [markdown]
# After 100 steps of 8 examples (800 sentences, less than half an epoch) exact match is
# still near zero for every method: a sentence must be right word for word. The held-out
# loss and the slot error already separate them; `minipeft compare` at its default 250 steps
# goes further.
#
# The figure `compare.plot_compare(rows)` draws (also saved as `compare.png`): the held-out
# loss along training, and the task's two scores against the number of trained parameters.

# %%
display(compare.plot_compare(rows))

# %% [markdown]
# ## What each method costs
#
# Trainable parameters are only part of the bill. AdamW keeps two moments per trained number
# (its state is 2 × 4 bytes per parameter in float32); the saved adapter is what you ship;
# the activations of the step are paid by every method alike.

# %%
trained = [r for r in rows if r["method"] != "base"]
labels = [r["label"] for r in trained]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True)
for ax, key, title in zip(axes, ("trainable_params", "adapter_bytes", "seconds_per_step"),
                          ("trainable parameters", "saved adapter (bytes)", "seconds per step")):
    ax.barh(labels, [max(r[key] or 0, 1e-9) for r in trained])
    ax.set_xscale("log" if key != "seconds_per_step" else "linear")
    ax.set_title(title)
axes[0].invert_yaxis()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Reading it against the LoRA paper's table
#
# The paper's Table 3 (Hu et al. 2021, E2E NLG on GPT-2 Medium, 355M parameters):
#
# | method | trainable | BLEU |
# |---|---|---|
# | full fine-tuning | 354.92M | 68.2 |
# | adapter (Lin et al.), small | 0.37M | 66.3 |
# | adapter (Lin et al.), large | 11.09M | 68.9 |
# | adapter (Houlsby) | 11.09M | 67.3 |
# | fine-tune the top 2 layers | 25.19M | 68.1 |
# | prefix tuning (layer) | 0.35M | 69.7 |
# | LoRA | 0.35M | 70.4 |
#
# Its message: a method that trains 0.1 % of the weights can match or beat full
# fine-tuning, and LoRA does so with no extra cost at inference. Things to keep apart when
# comparing our table with it:
#
# - **The model.** The paper's GPT-2 was pretrained on 40 GB of English web text; ours on one
#   megabyte of Shakespeare, with 1 M parameters. Our model must learn the *language* of the
#   task, not only its format. At this scale full fine-tuning and the high-capacity methods
#   have an advantage, and prompt tuning, whose paper shows the gap closing only at billions
#   of parameters, is expected to lag.
# - **The task and the metric.** E2E's references were written by people, several per input,
#   and BLEU rewards overlap with them. Our references come from a grammar, one per input, so
#   exact match is all or nothing, and slot error counts the attributes a sentence forgets.
# - **Proportions.** The paper's adapters are 0.1–3 % of the model; here the same
#   configurations are a larger share (C = 128: a bottleneck of 8 is 1/16 of the width, as
#   at 768, but the embedding table is a larger part of the total).
# - **Noise.** One seed and a few hundred steps: differences of a few points in exact match
#   are within what another seed would give. `compare.run(seed=1)` gives another draw.
#
# A few numbers from the run, computed:

# %%
by = {r["method"]: r for r in rows}
full = by.get("full")
for r in sorted(trained, key=lambda r: r["eval_loss"]):
    rel = f"{r['trainable_params'] / full['trainable_params']:.2%} of full fine-tuning's parameters" \
        if full else ""
    print(f"{r['label']:18s} eval loss {r['eval_loss']:.3f}, exact match {r['exact_match']:.0%}, "
          f"slot error {r['slot_error']:.0%}   {rel}")
print(f"\nbase model (no training): eval loss {by['base']['eval_loss']:.3f}, "
      f"exact match {by['base']['exact_match']:.0%}")

# %% [markdown]
# ## What to try next
#
# - `minipeft compare --steps 250` on the command line: the default budget, every method
#   (about five minutes on a laptop), and the same files.
# - `compare.run(methods="lora,dora,ia3", steps=300, seed=1, out="out/seed1", overwrite=True)`:
#   do the rankings hold for another seed and a longer budget?
# - Pass your own `learning_rates={"prompt": 0.3}`: is prompt tuning only badly tuned?
# - Open `out/compare/results.csv` in a spreadsheet; the adapters under `out/compare/adapters/`
#   load in peft.
# - Continue with **08 · Real GPT-2**.
