"""Where minipeft's LoRA training step goes, op by op: ms per step and % of the step.

Explicit: the profiler times what the model and the optimiser it is given call, and
nothing else. It installs a timed copy of the model's ops table (``model.ops``, the
functions model/gpt2.py and the PEFT hooks call: layernorm, attention, GELU,
the lm_head with the loss, the linear products, the head split/merge), wraps the model's hooks on
that one instance (``_linear``, ``_attention``, …, see model/gpt2.py) and its
optimiser's ``step``, and takes all three back out after. No module is changed.

Time is exclusive: a call's children count for their own op, so the rows add up; what
no timer sees is "other". The ``_linear`` hook's own time, beyond the table's
``linear_forward``, is the PEFT method's work on a linear layer (LoRA's products, its
dropout, its kernels): the "LoRA" rows.
"""
from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict

from .timing import minipeft_step

TABLE_OPS = {                        # a function of the ops table (GPT2.ops): its op
    "layernorm_forward": "layernorm fwd", "layernorm_backward": "layernorm bwd",
    "attention_forward": "attention fwd", "attention_backward": "attention bwd",
    "split_heads": "attention fwd", "merge_heads": "attention fwd",
    "merge_heads_backward": "attention bwd", "split_heads_backward": "attention bwd",
    "gelu_forward": "gelu fwd", "gelu_backward": "gelu bwd",
    "linear_forward": "linear fwd (x W + b)", "linear_backward": "linear bwd (dout Wᵀ)",
    "cross_entropy": "cross-entropy fwd+bwd",
    "lm_head_loss": "lm_head + loss, fwd+bwd",     # counted rows only (ops/loss.py)
}
HOOKS = {                            # a method of the model (model/gpt2.py): its op
    "_embed": "embedding fwd", "_embed_backward": "embedding bwd",
    "_linear": "LoRA fwd", "_linear_backward": "LoRA bwd",      # beyond the table's products
    "_attention": "attention fwd", "_attention_backward": "attention bwd",
    "_residual": "residual fwd", "_residual_backward": "residual bwd",
    "_block_forward": "residual fwd", "_block_backward": "residual bwd",   # the blocks' own adds
}
PROFILE_ORDER = ["embedding fwd", "layernorm fwd", "linear fwd (x W + b)", "LoRA fwd",
                 "attention fwd", "gelu fwd", "residual fwd", "lm_head + loss, fwd+bwd",
                 "residual bwd", "gelu bwd", "attention bwd", "LoRA bwd", "linear bwd (dout Wᵀ)",
                 "layernorm bwd", "embedding bwd", "AdamW step", "other"]


class OpTimer:
    """Wraps callables with timers that count exclusive time per op."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self._children = []              # a stack: time spent in the children of each open call

    def wrap(self, op: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._children.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.seconds[op] += dt - self._children.pop()
                if self._children:
                    self._children[-1] += dt
        return timed


class TimedOps:
    """An ops table whose functions in TABLE_OPS are timed; the rest pass through."""

    def __init__(self, table, timer: OpTimer):
        self._table = table
        for name, op in TABLE_OPS.items():
            setattr(self, name, timer.wrap(op, getattr(table, name)))

    def __getattr__(self, name):
        return getattr(self._table, name)


@contextlib.contextmanager
def profiled(model, opt):
    """Within the block, ``model``'s ops and hooks and ``opt.step`` are timed: yields the
    OpTimer. After it, the model runs its own ops table again."""
    timer, table = OpTimer(), model._ops          # the table set on the model, if any
    model.ops = TimedOps(model.ops, timer)
    hooks = [name for name in HOOKS if hasattr(model, name)]
    for name in hooks:
        setattr(model, name, timer.wrap(HOOKS[name], getattr(model, name)))   # this instance only
    opt.step = timer.wrap("AdamW step", opt.step)
    try:
        yield timer
    finally:
        del opt.step                                                      # back to the class's
        for name in hooks:
            delattr(model, name)
        model.ops = table


def profile_step(pm, opt, ids, reps: int) -> dict:
    """-> {op: ms per step} of minipeft's LoRA training step (plus 'total', 'other')."""
    step = minipeft_step(pm, opt, ids)
    step()                                                               # warm-up
    with profiled(pm, opt) as timer:
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        total = time.perf_counter() - t0
    ms = {op: 1000 * s / reps for op, s in timer.seconds.items()}
    ms["other"] = 1000 * total / reps - sum(ms.values())
    ms["total"] = 1000 * total / reps
    return ms
