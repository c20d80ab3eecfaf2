"""One run: the machine, the set-up, each asked-for section in turn, the report."""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from .config import BenchConfig
from .machine import machine_info
from .matmul import matmul_peak, matmul_rates
from .memory import measure_memory
from .methods import measure_methods
from .models import (
    batch_ids,
    build_hf,
    half_masked_labels,
    minipeft_from_hf,
    minipeft_lora,
    minipeft_random,
    require_torch,
    torch_lora,
)
from .profile import profile_step
from .report import print_report
from .timing import (
    minipeft_decode,
    minipeft_forward,
    minipeft_step,
    time_alternating,
    torch_decode,
    torch_forward,
    torch_step,
)

_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:5.1f} s] {msg}", file=sys.stderr, flush=True)


def same_weights_check(base, hf, ids) -> dict:
    """The two models are the same: max|a − b| / max|b| of their logits on the batch."""
    import torch  # optional: only with the reference side (require_torch)
    with torch.no_grad():
        ref = hf(input_ids=torch.as_tensor(ids), use_cache=False).logits.numpy()
    ours = base(ids)
    return {"logits_rel_diff": float(np.abs(ours - ref).max() / np.abs(ref).max())}


def run(cfg: BenchConfig, command: str = "python -m minipeft.bench") -> dict:
    """Measure every section of ``cfg.sections``, print the report, return the numbers."""
    if cfg.torch:
        require_torch()
    res = {"config": dataclasses.asdict(cfg), "command": command,
           "machine": machine_info(cfg.torch), "times": {}}
    want = set(cfg.sections)
    ids, prompt = batch_ids(cfg)
    hf = base = pm = opt = None
    if want - {"memory", "matmul"}:                  # the sections that run a model here
        if cfg.torch:
            _log("building the random GPT-2 (transformers) and minipeft's copy")
            hf = build_hf(cfg)
            base = minipeft_from_hf(hf)
            res["machine"]["attn_implementation"] = getattr(hf.config, "_attn_implementation", "?")
            res["check"] = same_weights_check(base, hf, ids)
        else:
            base = minipeft_random(cfg)
        pm, opt = minipeft_lora(base, cfg)

    def alternate(key, fns):
        res["times"][key] = time_alternating(fns, cfg.reps, cfg.warmup, cfg.pause)

    if "train" in want:
        _log(f"LoRA training step, {cfg.reps} alternating reps")
        fns = {"minipeft": minipeft_step(pm, opt, ids)}
        if cfg.torch:
            fns["torch"] = torch_step(*torch_lora(hf, cfg), ids)
        alternate("train", fns)
    if "masked" in want:
        _log(f"LoRA training step, first half of the labels -100, {cfg.reps} alternating reps")
        labels = half_masked_labels(ids)
        fns = {"minipeft": minipeft_step(pm, opt, ids, labels)}
        if cfg.torch:
            fns["torch"] = torch_step(*torch_lora(hf, cfg), ids, labels)
        alternate("masked", fns)
    if "forward" in want:
        _log("forward (logits, no grad)")
        fns = {"minipeft": minipeft_forward(base, ids)}
        if cfg.torch:
            fns["torch"] = torch_forward(hf, ids)
        alternate("forward", fns)
    if "decode" in want:
        _log("greedy decode with a KV cache")
        fns = {"minipeft": minipeft_decode(base, prompt, cfg.new_tokens)}
        if cfg.torch:
            fns["torch"] = torch_decode(hf, prompt, cfg.new_tokens)
            res["check"]["same_tokens"] = bool(np.array_equal(fns["minipeft"](), fns["torch"]().numpy()))
        alternate("decode", fns)
    if "memory" in want:
        _log("peak memory of the training step (child processes)")
        res["memory"] = {side: measure_memory(side, cfg)
                         for side in (("minipeft", "torch") if cfg.torch else ("minipeft",))}
    if "matmul" in want:
        _log("numpy matmul on the step's shapes")
        res["matmul"] = matmul_rates(cfg)
        res["matmul_peak_gflops"] = matmul_peak(res["matmul"])
    if "profile" in want:
        _log("per-op profile of minipeft's LoRA step")
        res["profile"] = profile_step(pm, opt, ids, cfg.reps)
    if "methods" in want:
        _log("every PEFT method's training step")
        res["methods"] = measure_methods(base, cfg)
    print_report(res, cfg)
    return res
