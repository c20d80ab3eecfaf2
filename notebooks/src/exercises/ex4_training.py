# %% [markdown]
# # Exercises, part 4: training
#
# One AdamW step, the number of parameters each method trains on GPT-2 124M, and a
# short training loop. Write each function, run the check below it; a check prints a
# verdict and never stops the notebook.

# %%
import os

import numpy as np

from minipeft.exercises import check

FAST = os.environ.get("MINIPEFT_FAST") == "1"   # shorter training in the last demo

# %% [markdown]
# ## Exercise 4.1: one AdamW step
#
# AdamW (Loshchilov & Hutter) is Adam with the weight decay taken out of the gradient.
# For step `t` (1, 2, ...) of a parameter θ with gradient g, in torch's order:
#
# 1. decay: θ ← θ·(1 − lr·λ)
# 2. moments: m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²
# 3. bias correction: m̂ = m / (1−β₁ᵗ),  v̂ = v / (1−β₂ᵗ)
# 4. update: θ ← θ − lr · m̂ / (√v̂ + ε)
#
# Return the new `(param, m, v)`.

# %%
def adamw_step(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """-> (param, m, v) after step t."""
    ### BEGIN SOLUTION  Exercise 4.1: one AdamW step
    param = param * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad ** 2
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    param = param - lr * m_hat / (np.sqrt(v_hat) + eps)
    return param, m, v
    ### END SOLUTION


check("adamw_step", adamw_step);

# %% [markdown]
# ## Exercise 4.2: what each method trains on GPT-2 124M
#
# Return the number of trained parameters of `method` on a GPT-2 with `n_layer` blocks
# of width `n_embd` (C), for:
#
# | method | what is trained |
# |---|---|
# | `"full"` | every tensor of the model (`lm_head` is tied to `wte`) |
# | `"lora"` | LoRA of rank r on each block's fused q/k/v layer `attn.c_attn` (C → 3C) |
# | `"dora"` | the same, with DoRA's magnitude |
# | `"ia3"` | peft's default: output scaling of `c_attn`, input scaling of `mlp.c_proj` (4C → C) |
# | `"prefix"` | P virtual tokens, flat (no reparametrisation MLP) |
# | `"prompt"` | P virtual tokens |
# | `"pfeiffer"` / `"houlsby"` | bottleneck adapters of width m = C // reduction_factor, with biases |
#
# Each GPT-2 block has `ln_1, attn.c_attn (C→3C), attn.c_proj (C→C), ln_2, mlp.c_fc
# (C→4C), mlp.c_proj (4C→C)`; around them `wte (V, C)`, `wpe (n_positions, C)`, `ln_f`.

# %%
def count_trainable(method, n_layer=12, n_embd=768, vocab_size=50257, n_positions=1024,
                    r=8, num_virtual_tokens=20, reduction_factor=16):
    """-> int."""
    ### BEGIN SOLUTION  Exercise 4.2: trainable parameter counts
    L, C, P = n_layer, n_embd, num_virtual_tokens
    m = C // reduction_factor
    per_block = (2 * C) + (C * 3 * C + 3 * C) + (C * C + C) + (2 * C) + (C * 4 * C + 4 * C) \
        + (4 * C * C + C)
    adapter = 2 * C * m + m + C                     # down (m, C) + b, up (C, m) + b
    return {"full": vocab_size * C + n_positions * C + L * per_block + 2 * C,
            "lora": L * r * (C + 3 * C),
            "dora": L * (r * (C + 3 * C) + 3 * C),
            "ia3": L * (3 * C + 4 * C),
            "prefix": P * 2 * L * C,
            "prompt": P * C,
            "pfeiffer": L * adapter,
            "houlsby": 2 * L * adapter}[method]
    ### END SOLUTION


check("count_trainable", count_trainable);

# %% [markdown]
# ## Exercise 4.3: a short training loop
#
# `model` is a `PeftModel` (LoRA); `batches` a list of `(input_ids, labels)`. Train for
# `steps` steps with minipeft's `AdamW` over `model.trainable_parameters()` (the live
# arrays: it updates them in place), learning rate `lr` and **no** weight decay; step `t`
# uses `batches[t % len(batches)]`. `model.loss_and_grads(ids, labels)` gives
# `(loss, grads)` with grads keyed like the trainable parameters. Return the list of the
# losses, the loss of step t being the one its gradients came from.

# %%
from minipeft.train.optim import AdamW


def train_loop(model, batches, steps, lr):
    """-> list of `steps` losses."""
    ### BEGIN SOLUTION  Exercise 4.3: a training loop
    optimizer = AdamW(model.trainable_parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss, grads = model.loss_and_grads(ids, labels)
        optimizer.step(grads)
        losses.append(loss)
    return losses
    ### END SOLUTION


verdict = check("train_loop", train_loop)

# %% [markdown]
# Once your loop passes, it trains the bundled model: LoRA on tiny-shakespeare's
# attention, a few steps on one line of Shakespeare (fewer in fast mode).

# %%
if verdict.passed:
    from minipeft import GPT2, LoraConfig, get_peft_model, load_tokenizer
    tok = load_tokenizer("tiny-shakespeare")
    base = GPT2.from_pretrained("tiny-shakespeare")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                            lora_dropout=0.0, fan_in_fan_out=True))
    ids = np.array([tok.encode("To be, or not to be, that is the question.").ids])
    losses = train_loop(model, [(ids, ids)], 5 if FAST else 30, 1e-2)
    print(" ".join(f"{x:.3f}" for x in losses))
else:
    print("(the demo runs once train_loop passes its check)")

# %% [markdown]
# ## What next
# `minipeft/train/trainer.py` is the full loop: warm-up and decay, clipping, gradient
# accumulation, checkpoints you can resume bit for bit.
