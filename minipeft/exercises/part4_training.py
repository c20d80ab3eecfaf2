"""Part 4 — training: one AdamW step, what each method trains, a short training loop.

References: ``minipeft.train.optim.AdamW``, ``get_peft_model`` on GPT-2's shapes (the
weights are zero-stride broadcasts: counting needs their shapes, not 500 MB), and
``minipeft.train.trainer.Trainer``.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

from ..config import GPT2Config
from ..model.gpt2 import GPT2
from ..peft import (
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from ..train.optim import AdamW
from ..train.pretrain import expected_shapes, init_params
from ..train.trainer import Trainer, TrainingArguments
from .core import Exercise, Misconception, torch_errors

# ------------------------------------------------------------------ 4.1 one AdamW step
ADAMW_ARGS = ("param", "grad", "m", "v", "t", "lr", "beta1", "beta2", "eps", "weight_decay")


def _adamw_ref(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    p = np.array(param, dtype=np.float64)
    opt = AdamW({"p": p}, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    opt.exp_avg["p"][...] = m
    opt.exp_avg_sq["p"][...] = v
    opt.param_step["p"] = t - 1                             # this step is the t-th
    opt.step({"p": grad})
    return p, opt.exp_avg["p"], opt.exp_avg_sq["p"]


def _adamw_wrong(kind):
    def wrong(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
        p, g = param.copy(), grad.copy()
        if kind == "l2_not_decoupled":
            g = g + weight_decay * p
        elif kind == "decay_without_lr":
            p = p * (1 - weight_decay)
        elif kind != "decay_after_update":
            p = p * (1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        mhat = m if kind == "no_bias_correction" else m / (1 - beta1 ** t)
        vhat = v if kind in ("no_bias_correction", "bias_correction_m_only") else v / (1 - beta2 ** t)
        denom = np.sqrt(vhat + eps) if kind == "eps_inside_sqrt" else np.sqrt(vhat) + eps
        p = p - lr * mhat / denom
        if kind == "decay_after_update":
            p = p * (1 - lr * weight_decay)
        return p, m, v
    return wrong


def _adamw_cases(rng):
    def case(shape, t, fresh, lr, wd, eps=1e-8):
        return {"param": rng.standard_normal(shape), "grad": rng.standard_normal(shape) * 0.1,
                "m": np.zeros(shape) if fresh else rng.standard_normal(shape) * 0.05,
                "v": np.zeros(shape) if fresh else np.abs(rng.standard_normal(shape)) * 0.01,
                "t": t, "lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": eps, "weight_decay": wd}
    return [case((4, 5), 3, False, 0.1, 0.5, eps=1e-3), case((6,), 1, True, 1e-2, 0.1),
            case((3, 4), 50, False, 1e-3, 0.01)]


def _adamw_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _adamw_cases(rng)[0]
    p, m, v = fn(*(c[a].copy() if isinstance(c[a], np.ndarray) else c[a] for a in ADAMW_ARGS))
    tp = torch.nn.Parameter(torch.tensor(c["param"]))
    opt = torch.optim.AdamW([tp], lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"],
                            weight_decay=c["weight_decay"], foreach=False)
    opt.state[tp] = {"step": torch.tensor(float(c["t"] - 1)), "exp_avg": torch.tensor(c["m"]),
                     "exp_avg_sq": torch.tensor(c["v"])}
    tp.grad = torch.tensor(c["grad"])
    opt.step()
    st = opt.state[tp]
    return "torch.optim.AdamW", torch_errors({"param": (p, tp), "m": (m, st["exp_avg"]),
                                             "v": (v, st["exp_avg_sq"])})


ADAMW_STEP = Exercise(
    "4.1", "adamw_step", "one AdamW step (decoupled weight decay, bias correction)",
    args=ADAMW_ARGS, outputs=("param", "m", "v"), reference=_adamw_ref, cases=_adamw_cases,
    misconceptions=[
        Misconception("l2_not_decoupled", "That is Adam with an L2 penalty: the decay went into "
                      "the gradient, and so through the moments. Where does AdamW apply it?",
                      _adamw_wrong("l2_not_decoupled")),
        Misconception("no_bias_correction", "m and v start at zero, so early on they are too "
                      "small: what corrects them?", _adamw_wrong("no_bias_correction")),
        Misconception("bias_correction_m_only", "Both moments start at zero: are both "
                      "corrected?", _adamw_wrong("bias_correction_m_only")),
        Misconception("eps_inside_sqrt", "Where does ε go: under the square root, or added "
                      "after it?", _adamw_wrong("eps_inside_sqrt")),
        Misconception("decay_without_lr", "The decoupled decay shrinks the weight by a factor: "
                      "does the learning rate appear in it?", _adamw_wrong("decay_without_lr")),
        Misconception("decay_after_update", "Is the weight decayed before the Adam update or "
                      "after it? Follow torch.optim.AdamW's order.",
                      _adamw_wrong("decay_after_update")),
    ],
    with_torch=_adamw_torch)

# ------------------------------------------------------------------ 4.2 trainable parameters
METHODS = ("full", "lora", "dora", "ia3", "prefix", "prompt", "pfeiffer", "houlsby")
COUNT_ARGS = ("method", "n_layer", "n_embd", "vocab_size", "n_positions", "r",
              "num_virtual_tokens", "reduction_factor")


def method_config(method, r, num_virtual_tokens, reduction_factor):
    """The config each method name means in exercise 4.2 (None: full fine-tuning)."""
    return {"full": None,
            "lora": LoraConfig(r=r, lora_alpha=2 * r, target_modules=["c_attn"], fan_in_fan_out=True),
            "dora": LoraConfig(r=r, lora_alpha=2 * r, target_modules=["c_attn"], use_dora=True,
                               fan_in_fan_out=True),
            "ia3": IA3Config(fan_in_fan_out=True),
            "prefix": PrefixTuningConfig(num_virtual_tokens=num_virtual_tokens),
            "prompt": PromptTuningConfig(num_virtual_tokens=num_virtual_tokens),
            "pfeiffer": BottleneckConfig(preset="pfeiffer", reduction_factor=reduction_factor),
            "houlsby": BottleneckConfig(preset="houlsby", reduction_factor=reduction_factor),
            }[method]


@functools.lru_cache(maxsize=64)
def _count_ref(method, n_layer, n_embd, vocab_size, n_positions, r, num_virtual_tokens,
               reduction_factor):
    n_head = 12 if n_embd % 12 == 0 else 1
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                     vocab_size=vocab_size)
    zero = np.zeros((), np.float32)
    model = GPT2(cfg, {k: np.broadcast_to(zero, s) for k, s in expected_shapes(cfg).items()})
    config = method_config(method, r, num_virtual_tokens, reduction_factor)
    if config is None:
        return model.num_parameters()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, config)
    return int(sum(a.size for a in pm.trainable_parameters().values()))


def _count_wrong(kind):
    def wrong(method, n_layer, n_embd, vocab_size, n_positions, r, num_virtual_tokens, reduction_factor):
        L, C, P = n_layer, n_embd, num_virtual_tokens
        m = int(C // reduction_factor)
        ref = _count_ref(method, L, C, vocab_size, n_positions, r, P, reduction_factor)
        if kind == "c_attn_as_one" and method in ("lora", "dora", "ia3"):
            return {"lora": L * r * 2 * C, "dora": L * (r * 2 * C + C), "ia3": L * (C + 4 * C)}[method]
        if kind == "lm_head_counted" and method == "full":
            return ref + vocab_size * C
        if kind == "wpe_forgotten" and method == "full":
            return ref - n_positions * C
        if kind == "dora_magnitude_missing" and method == "dora":
            return L * r * 4 * C
        if kind == "prefix_keys_only" and method == "prefix":
            return P * L * C
        if kind == "prompt_per_layer" and method == "prompt":
            return L * P * C
        if kind == "houlsby_one_adapter" and method == "houlsby":
            return L * (2 * C * m + m + C)
        if kind == "adapter_biases_missing" and method in ("pfeiffer", "houlsby"):
            return (1 if method == "pfeiffer" else 2) * L * 2 * C * m
        return ref
    return wrong


def _count_cases(rng):
    shapes = [dict(n_layer=12, n_embd=768, vocab_size=50257, n_positions=1024, r=8,
                   num_virtual_tokens=20, reduction_factor=16),          # GPT-2 124M, the defaults
              dict(n_layer=4, n_embd=128, vocab_size=2048, n_positions=128,
                   r=int(rng.integers(2, 6)), num_virtual_tokens=int(rng.integers(5, 12)),
                   reduction_factor=8)]
    return [dict(method=m, **s) for s in shapes for m in METHODS]


PARAM_COUNTS = Exercise(
    "4.2", "count_trainable", "trainable parameters of every method on GPT-2 124M",
    args=COUNT_ARGS, outputs=("count",), reference=_count_ref, cases=_count_cases, integer=True,
    misconceptions=[
        Misconception("c_attn_as_one", "GPT-2's c_attn is one fused layer holding q, k and v: "
                      "how many outputs does it have?", _count_wrong("c_attn_as_one")),
        Misconception("lm_head_counted", "GPT-2's lm_head shares its weight with wte: how many "
                      "times is a tied weight counted?", _count_wrong("lm_head_counted")),
        Misconception("wpe_forgotten", "Full fine-tuning trains every tensor of the model: are "
                      "the position embeddings in your count?", _count_wrong("wpe_forgotten")),
        Misconception("dora_magnitude_missing", "DoRA trains LoRA's A and B and one more vector "
                      "per adapted layer: which?", _count_wrong("dora_magnitude_missing")),
        Misconception("prefix_keys_only", "A prefix gives every layer keys *and* values: how "
                      "many vectors per virtual token and layer?", _count_wrong("prefix_keys_only")),
        Misconception("prompt_per_layer", "A soft prompt enters once, at the embeddings: is it "
                      "repeated for every layer?", _count_wrong("prompt_per_layer")),
        Misconception("houlsby_one_adapter", "Houlsby places adapters after attention *and* "
                      "after the MLP: how many per block?", _count_wrong("houlsby_one_adapter")),
        Misconception("adapter_biases_missing", "The adapter's down- and up-projections are "
                      "linear layers: with or without biases?", _count_wrong("adapter_biases_missing")),
    ])

# ------------------------------------------------------------------ 4.3 a short training loop
_TINY = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=32)


def _task(case):
    """A fresh LoRA model (float64, no dropout) and its batches, from the case's seed."""
    rng = np.random.default_rng(case["seed"])
    model = GPT2(_TINY, init_params(_TINY, seed=case["seed"], dtype=np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"],
                                              lora_dropout=0.0, fan_in_fan_out=True),
                            seed=case["seed"])
    for k, a in pm.trainable_parameters().items():        # B = 0 would hide A's updates
        a[...] = rng.standard_normal(a.shape) * 0.3
    batches = []
    for _ in range(3):
        ids = rng.integers(0, _TINY.vocab_size, (2, 8))
        labels = ids.copy()
        labels[:, :3] = -100                               # a prompt, not scored
        batches.append((ids, labels))
    return pm, batches


def _train_invoke(fn, case):
    pm, batches = _task(case)
    base = {k: v.copy() for k, v in pm.base_model.params.items()}
    losses = fn(pm, batches, case["steps"], case["lr"])
    trained = np.concatenate([a.reshape(-1) for _, a in sorted(pm.trainable_parameters().items())])
    moved = max(float(np.max(np.abs(pm.base_model.params[k] - v))) for k, v in base.items())
    return np.asarray(losses, dtype=np.float64) if losses is not None else losses, trained, moved


def _train_ref(model, batches, steps, lr):
    args = TrainingArguments(learning_rate=lr, max_steps=steps, lr_scheduler_type="constant",
                             warmup_steps=0, weight_decay=0.0, max_grad_norm=None)
    history = Trainer(model, args, lambda s: [(*batches[s % len(batches)], None)],
                      progress=False).train()
    return [h["loss"] for h in history]


def _train_wrong(kind):
    def wrong(model, batches, steps, lr):
        params = model.trainable_parameters()

        def new_opt():
            return AdamW(params, lr=lr) if kind == "weight_decay_default" else \
                AdamW(params, lr=lr, weight_decay=0.0)
        opt, losses = new_opt(), []
        for step in range(steps):
            ids, labels = batches[0] if kind == "first_batch_only" else batches[step % len(batches)]
            loss, grads = model.loss_and_grads(ids, labels)
            if kind == "new_optimizer_each_step":
                opt = new_opt()
            if kind == "gradient_ascent":
                grads = {k: -g for k, g in grads.items()}
            if kind == "sgd_instead":
                for k, g in grads.items():
                    params[k] -= lr * g
            elif kind != "no_optimizer_step":
                opt.step(grads)
            if kind == "loss_after_step":
                loss = model.loss(ids, labels)
            losses.append(loss)
        return losses
    return wrong


def _train_cases(rng):
    return [{"seed": 0, "steps": 4, "lr": 0.05}, {"seed": int(rng.integers(1, 1000)), "steps": 5, "lr": 0.02}]


TRAINING_LOOP = Exercise(
    "4.3", "train_loop", "a short training loop (LoRA, AdamW)",
    args=("model", "batches", "steps", "lr"), outputs=("losses", "trained adapter", "base change"),
    reference=_train_ref, cases=_train_cases, invoke=_train_invoke,
    misconceptions=[
        Misconception("no_optimizer_step", "Do the adapter's weights change between steps? "
                      "What applies the gradients?", _train_wrong("no_optimizer_step")),
        Misconception("gradient_ascent", "Does your loss go down? Which way does a step move "
                      "the weights?", _train_wrong("gradient_ascent")),
        Misconception("loss_after_step", "Which loss belongs to step t: the one the gradients "
                      "were computed from, or one measured after the update?",
                      _train_wrong("loss_after_step")),
        Misconception("new_optimizer_each_step", "AdamW keeps moments from step to step: how "
                      "long does your optimizer live?", _train_wrong("new_optimizer_each_step")),
        Misconception("weight_decay_default", "What weight decay does AdamW use when you don't "
                      "say? The exercise asks for none.", _train_wrong("weight_decay_default")),
        Misconception("first_batch_only", "Which batch does step t train on?",
                      _train_wrong("first_batch_only")),
        Misconception("sgd_instead", "The exercise asks for AdamW: is that the update you "
                      "apply?", _train_wrong("sgd_instead")),
    ])

EXERCISES = [ADAMW_STEP, PARAM_COUNTS, TRAINING_LOOP]
