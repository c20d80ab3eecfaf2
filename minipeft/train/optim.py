"""AdamW, clipping by global norm and the learning-rate schedules, as torch and transformers do them.

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) is
Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015) with the
weight decay taken out of the gradient and applied to the weights directly. Step t
(t = 1, 2, ...) of one parameter θ with gradient g:

    θ  ← θ · (1 - lr·λ)                               decoupled weight decay (λ = 0 for no_decay)
    m  ← β1·m + (1-β1)·g
    v  ← β2·v + (1-β2)·g²
    θ  ← θ - (lr / (1-β1^t)) · m / (√v / √(1-β2^t) + ε)

in the order of torch.optim.AdamW (``_single_tensor_adam`` in torch/optim/adam.py,
foreach=False), so float64 agrees with torch to rounding. Scalars are Python floats cast
to the parameter's dtype, as torch's CPU kernels do: float32 stays float32. Where torch
differs at the last bit: it writes m's update as ``lerp_`` (m + (1-β1)·(g - m)), its CPU
kernels fuse ``lerp_`` and ``addcmul_`` into one FMA, and its vectorised ``sqrt`` (SLEEF)
is not always correctly rounded; NumPy rounds each operation, so float32 agrees to ~1 ulp
per step, not bit for bit.

    clip_grad_norm:  n = ‖(‖g_1‖, ..., ‖g_k‖)‖;  g ← g · min(1, max_norm / (n + 1e-6))
    lr_multiplier:   transformers' get_{constant,linear,cosine}_schedule_with_warmup lambdas.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, InputError

SCHEDULES = ("constant", "linear", "cosine")


def _check_hyper(lr, betas, eps, weight_decay):
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ConfigError(f"AdamW: lr must be a finite number >= 0, got {lr!r}.")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2 \
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"AdamW: betas must be two numbers in [0, 1), got {betas!r}.")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ConfigError(f"AdamW: eps must be a finite number > 0, got {eps!r}.")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"AdamW: weight_decay must be a finite number >= 0, got {weight_decay!r}.")


class AdamW:
    """torch.optim.AdamW over a dict of NumPy arrays, updated in place.

    A name missing from the grads of a step is skipped that step, as torch skips a
    parameter whose .grad is None: its moments and its own step count t stay as they
    were (so each parameter keeps its t, as torch's per-parameter state["step"])."""

    def __init__(self, params: dict[str, np.ndarray], lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, no_decay=()):
        _check_hyper(lr, betas, eps, weight_decay)
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
                raise ConfigError(f"AdamW: parameter {name!r} must be a float32 or float64 NumPy "
                                  f"array, got {type(p).__name__} {getattr(p, 'dtype', '')}.")
        unknown = sorted(set(no_decay) - set(params))
        if unknown:
            raise ConfigError(f"AdamW: no_decay names no parameter: {unknown[:5]}.")
        self.params = params                                    # the caller's arrays, never rebound
        self.lr, self.betas, self.eps = float(lr), tuple(float(b) for b in betas), float(eps)
        self.weight_decay, self.no_decay = float(weight_decay), set(no_decay)
        self.exp_avg = {k: np.zeros_like(p) for k, p in params.items()}      # m, as p
        self.exp_avg_sq = {k: np.zeros_like(p) for k, p in params.items()}   # v, as p
        self.param_step = {k: 0 for k in params}                # t of each parameter
        self.step_count = 0                                     # calls of step()

    def step(self, grads: dict[str, np.ndarray], lr: float | None = None) -> None:
        """One AdamW step with ``lr`` (the constructor's when None) for every name in grads."""
        lr = self.lr if lr is None else lr
        if not (isinstance(lr, (int, float, np.floating)) and math.isfinite(lr) and lr >= 0):
            raise ConfigError(f"AdamW.step: lr must be a finite number >= 0, got {lr!r}.")
        unknown = sorted(set(grads) - set(self.params))
        if unknown:
            raise InputError(f"AdamW.step: gradients for unknown parameters {unknown[:5]}; "
                             f"the optimiser holds {len(self.params)} "
                             f"(e.g. {next(iter(self.params), None)}).")
        for name, g in grads.items():
            if np.shape(g) != self.params[name].shape:
                raise InputError(f"AdamW.step: gradient of {name!r} has shape {np.shape(g)}, "
                                 f"the parameter {self.params[name].shape}.")
        self.step_count += 1
        for name, p in self.params.items():
            if name in grads:
                self._update(name, p, np.asarray(grads[name], dtype=p.dtype), float(lr))

    def _update(self, name, p, g, lr):
        dt = p.dtype.type                                       # scalars in p's dtype, as torch
        beta1, beta2 = self.betas
        m, v = self.exp_avg[name], self.exp_avg_sq[name]
        self.param_step[name] += 1
        t = self.param_step[name]                               # step_t += 1
        wd = 0.0 if name in self.no_decay else self.weight_decay
        if wd != 0:
            p *= dt(1 - lr * wd)                                # param.mul_(1 - lr * weight_decay)
        m *= dt(beta1)                                          # m ← β1·m + (1-β1)·g
        m += dt(1 - beta1) * g
        v *= dt(beta2)                                          # v ← β2·v + (1-β2)·g²
        v += dt(1 - beta2) * g * g
        bias_correction1 = 1 - beta1 ** t                       # Python floats, as torch
        bias_correction2 = 1 - beta2 ** t
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        denom = np.sqrt(v) / dt(bias_correction2_sqrt) + dt(self.eps)   # (sqrt(v) / bc2_sqrt).add_(eps)
        p += dt(-step_size) * m / denom                 # param.addcdiv_(exp_avg, denom, value=-step_size)

    def state_dict(self) -> dict:
        """Everything a bit-for-bit continuation needs; arrays are copies, the rest JSON-able.
        "step" counts step() calls, "param_step" each parameter's t, "lr" is step()'s default."""
        return {"step": self.step_count, "param_step": dict(self.param_step), "lr": self.lr,
                "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
                "no_decay": sorted(self.no_decay),
                "exp_avg": {k: v.copy() for k, v in self.exp_avg.items()},
                "exp_avg_sq": {k: v.copy() for k, v in self.exp_avg_sq.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict() (hyper-parameters included) made for the same parameters."""
        need = ("step", "lr", "betas", "eps", "weight_decay", "exp_avg", "exp_avg_sq")
        missing = [k for k in need if k not in state]
        if missing:
            raise ConfigError(f"AdamW.load_state_dict: the state lacks {missing}; pass what "
                              "AdamW.state_dict() returned.")
        for part in ("exp_avg", "exp_avg_sq"):
            theirs, mine = set(state[part]), set(self.params)
            if theirs != mine:
                raise ConfigError(
                    f"AdamW.load_state_dict: the state's {part} is for other parameters "
                    f"(only in the state: {sorted(theirs - mine)[:5]}, only here: "
                    f"{sorted(mine - theirs)[:5]}); it belongs to another model or adapter.")
            for k, a in state[part].items():
                if np.shape(a) != self.params[k].shape:
                    raise ConfigError(f"AdamW.load_state_dict: {part}[{k!r}] has shape "
                                      f"{np.shape(a)}, the parameter {self.params[k].shape}.")
        no_decay = set(state.get("no_decay", self.no_decay))
        if no_decay - set(self.params):
            raise ConfigError(f"AdamW.load_state_dict: no_decay names no parameter: "
                              f"{sorted(no_decay - set(self.params))[:5]}.")
        _check_hyper(state["lr"], state["betas"], state["eps"], state["weight_decay"])
        self.lr, self.eps = float(state["lr"]), float(state["eps"])
        self.betas = tuple(map(float, state["betas"]))
        self.weight_decay, self.no_decay = float(state["weight_decay"]), no_decay
        self.step_count = int(state["step"])
        steps = state.get("param_step") or {k: self.step_count for k in self.params}
        self.param_step = {k: int(steps[k]) for k in self.params}
        for k, p in self.params.items():
            self.exp_avg[k] = np.array(state["exp_avg"][k], dtype=p.dtype)          # copies
            self.exp_avg_sq[k] = np.array(state["exp_avg_sq"][k], dtype=p.dtype)


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_: scale all grads in place so that their joint 2-norm
    is at most max_norm; return the norm before clipping.

    As torch: the norm of the per-tensor norms, then clip_coef = max_norm / (norm + 1e-6)
    clamped to 1 and always multiplied in (by 1.0 when not clipping: exact). torch's
    ``max_norm / tensor`` is ``tensor.reciprocal() * max_norm`` (Tensor.__rtruediv__), so
    that is the order here. A non-finite norm is returned and the grads are left as they
    are (torch would scale them by nan or 0): the caller decides."""
    if not (isinstance(max_norm, (int, float)) and max_norm > 0):
        raise ConfigError(f"clip_grad_norm: max_norm must be a number > 0, got {max_norm!r}.")
    if not grads:
        return 0.0
    norms = np.stack([np.linalg.norm(np.reshape(g, -1)) for g in grads.values()])   # (k,)
    total = np.linalg.norm(norms)
    if not np.isfinite(total):
        return float(total)
    dt = total.dtype.type
    clip_coef = min((dt(1) / (total + dt(1e-6))) * dt(max_norm), dt(1.0))
    for g in grads.values():
        g *= clip_coef.astype(g.dtype)
    return float(total)


def lr_multiplier(schedule: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """The factor on the base lr at optimizer step ``step`` (0, 1, ...): LambdaLR's lambda(step).

    transformers' lambdas (optimization.py), num_cycles = 0.5 for cosine. As there,
    linear stays at 0 past total_steps, and cosine climbs again past total_steps."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown lr schedule {schedule!r}; use one of {', '.join(SCHEDULES)}.")
    for what, n in (("step", step), ("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(f"lr schedule: {what} must be an integer >= 0, got {n!r}.")
    if step < warmup_steps:                                 # warm-up, the same for all three
        return float(step) / float(max(1, warmup_steps))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(0.5) * 2.0 * progress)))
