"""Every PEFT method's training step (minipeft only), against LoRA's."""
from __future__ import annotations

import warnings

from .. import peft
from ..train.optim import AdamW
from .config import BenchConfig
from .models import batch_ids, lora_kwargs, with_fresh_base
from .timing import median, minipeft_step, time_alternating

METHODS = [   # (label, config maker taking minipeft.peft); add a method with one line
    ("LoRA", lambda m, cfg: m.LoraConfig(**lora_kwargs(cfg))),
    ("DoRA", lambda m, cfg: m.LoraConfig(**lora_kwargs(cfg), use_dora=True)),
    ("IA3", lambda m, cfg: m.IA3Config()),
    ("prefix tuning (20)", lambda m, cfg: m.PrefixTuningConfig(num_virtual_tokens=20)),
    ("prompt tuning (20)", lambda m, cfg: m.PromptTuningConfig(num_virtual_tokens=20)),
    ("bottleneck (pfeiffer)", lambda m, cfg: m.BottleneckConfig(preset="pfeiffer")),
]


def method_models(base, cfg: BenchConfig):
    """-> [(label, step or None, trainable count, note)]: a training step per method,
    or why it was skipped."""
    out = []
    for label, make in METHODS:
        try:
            config = make(peft, cfg)
        except AttributeError as e:
            out.append((label, None, 0, f"skipped: not in minipeft yet ({e})"))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pm = peft.get_peft_model(with_fresh_base(base), config)
            opt = AdamW(pm.trainable_parameters(), lr=1e-4)
            ids, _ = batch_ids(cfg)
            step = minipeft_step(pm.train(), opt, ids)
            step()                                       # fails here rather than mid-timing
        except Exception as e:                           # a method being written: say so, go on
            out.append((label, None, 0, f"skipped: {type(e).__name__}: {e}"))
            continue
        n = sum(a.size for a in pm.trainable_parameters().values())
        out.append((label, step, n, ""))
    return out


def measure_methods(base, cfg: BenchConfig) -> list[dict]:
    """Each method's training step, round-robin, median; time relative to LoRA's."""
    models = method_models(base, cfg)
    steps = {label: step for label, step, _, _ in models if step is not None}
    times = time_alternating(steps, cfg.reps, 0, cfg.pause)      # method_models warmed them up
    lora = median(times.get("LoRA", []))
    rows = []
    for label, step, n, note in models:
        t = median(times.get(label, []))
        rows.append({"method": label, "trainable": n, "seconds": t, "tokens_per_s": cfg.tokens / t,
                     "vs_lora": t / lora, "note": note})
    return rows
