"""The measured calls of each side, and how they are timed.

Each side first runs ``warmup`` times (Numba compiles, caches fill), then ``reps``
repetitions ALTERNATING the sides (methods: round-robin), with a short ``pause`` before
each run so that one library's idle threads have stopped spinning when the other starts;
the median is reported.
"""
from __future__ import annotations

import statistics
import time


def minipeft_step(pm, opt, ids, labels=None):
    """One training step: loss, gradients of the trainable tensors, AdamW. Labels: the ids
    (every next token scored), or ``labels`` (-100 where nothing is scored)."""
    labels = ids if labels is None else labels

    def step():
        loss, grads = pm.loss_and_grads(ids, labels)
        opt.step(grads)
        return loss
    return step


def torch_step(pm_t, opt, ids, labels=None):
    """One training step of peft: forward with labels, backward, AdamW, zero_grad."""
    import torch  # optional: the reference side (require_torch checked it)
    tids = torch.as_tensor(ids)
    tlabels = tids if labels is None else torch.as_tensor(labels)

    def step():
        loss = pm_t(input_ids=tids, labels=tlabels, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def minipeft_forward(model, ids):
    return lambda: model(ids)


def torch_forward(hf, ids):
    import torch  # optional: the reference side (require_torch checked it)
    tids = torch.as_tensor(ids)

    def forward():
        with torch.no_grad():
            return hf(input_ids=tids, use_cache=False).logits
    return forward


def minipeft_decode(model, prompt, n):
    return lambda: model.generate(prompt, n, eos_token_id=None)


def torch_decode(hf, prompt, n):
    import torch  # optional: the reference side (require_torch checked it)
    tprompt = torch.as_tensor(prompt)
    mask = torch.ones_like(tprompt)
    eos = hf.config.eos_token_id

    def decode():
        with torch.no_grad():
            return hf.generate(tprompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=eos)
    return decode


def time_alternating(fns: dict, reps: int, warmup: int, pause: float = 0.0) -> dict:
    """{name: fn} -> {name: [seconds] * reps}: warm-ups first, then the reps in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            time.sleep(pause)               # the other library's idle threads stop spinning
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs):
    return statistics.median(xs) if xs else float("nan")
