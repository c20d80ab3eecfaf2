"""``minipeft info``: how many parameters each method trains, and what training costs in memory.

The memory column counts what AdamW training keeps in float32: the model's weights,
plus for every *trained* value its gradient and AdamW's two moments (3 × 4 bytes).
Activations come on top and depend on batch × length, not on the method.
"""
from __future__ import annotations

import warnings

from .errors import MinipeftError
from .model.gpt2 import GPT2
from .peft import (
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)


def methods(r: int = 8) -> list[tuple[str, object]]:
    """[(label, a PEFT config or None for full fine-tuning)], the rows of the table."""

    def lora(**kwargs):
        return LoraConfig(r=r, lora_alpha=2 * r, fan_in_fan_out=True, **kwargs)
    return [
        ("full fine-tuning", None),
        (f"LoRA r={r} c_attn", lora(target_modules=["c_attn"])),
        (f"LoRA r={r} all-linear", lora(target_modules="all-linear")),
        (f"LoRA r={r} q,v slices of c_attn",
         lora(target_modules=["c_attn"], enable_lora=[True, False, True])),
        (f"DoRA r={r} c_attn", lora(target_modules=["c_attn"], use_dora=True)),
        (f"LoRA r={r} c_attn + bias=all", lora(target_modules=["c_attn"], bias="all")),
        ("IA3 (peft's placement)", IA3Config()),
        ("IA3 (the paper's: k, v, ff)", IA3Config.paper()),
        ("prefix P=20, flat", PrefixTuningConfig(num_virtual_tokens=20)),
        ("prefix P=20, with the MLP", PrefixTuningConfig(num_virtual_tokens=20, prefix_projection=True)),
        ("prompt P=20", PromptTuningConfig(num_virtual_tokens=20)),
        ("bottleneck pfeiffer", BottleneckConfig(preset="pfeiffer")),
        ("bottleneck houlsby", BottleneckConfig(preset="houlsby")),
        ("bottleneck parallel", BottleneckConfig(preset="parallel")),
    ]


def method_table(model, r: int = 8) -> list[dict]:
    """[{method, trainable, total, percent, train_mb}] for each method of ``methods(r)``."""
    base_total = model.num_parameters()
    rows = []
    for label, config in methods(r):
        if config is None:
            trainable, total = base_total, base_total
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pm = get_peft_model(model, config)
            trainable = sum(a.size for a in pm.trainable_parameters().values())
            total = pm.num_parameters()
        rows.append({"method": label, "trainable": trainable, "total": total,
                     "percent": 100 * trainable / total,
                     "train_mb": (total + 3 * trainable) * 4 / 2**20})
    return rows


def print_info(path_or_name, r: int = 8) -> None:
    if r < 1:
        raise MinipeftError(f"--r must be >= 1, got {r}.")
    model = GPT2.from_pretrained(path_or_name)
    c = model.config
    print(f"{path_or_name}: GPT-2 with n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, "
          f"n_positions={c.n_positions}, vocab_size={c.vocab_size}; "
          f"{model.num_parameters():,} parameters ({model.num_parameters() * 4 / 2**20:.1f} MB float32)")
    print(f"\n{'method':34s} {'trainable':>12s} {'% of all':>9s} {'train memory':>13s}")
    for row in method_table(model, r):
        print(f"{row['method']:34s} {row['trainable']:>12,d} {row['percent']:>8.4f}% "
              f"{row['train_mb']:>10.1f} MB")
    print("\ntrain memory: weights + gradient + AdamW's two moments of what is trained, float32; "
          "activations come on top.")
