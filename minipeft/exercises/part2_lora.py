"""Part 2 — LoRA and DoRA on GPT-2's Conv1D layers (W stored [in, out]).

References: ``minipeft.ops.linear`` and ``minipeft.peft.lora`` wrapped to the student's
signatures; A (r, in) and B (out, r) in peft's (nn.Linear) layout, as lora_A/lora_B.
The torch comparisons use autograd on the same equations (peft itself takes ~10 s to
import, too long for a notebook cell); tests/test_lora_vs_peft.py holds the package to peft.
"""
from __future__ import annotations

import math

import numpy as np

from ..ops import linear_backward, linear_forward
from ..peft import lora
from .core import Exercise, Misconception, fd_errors, shape_error_hint, torch_errors

LAYOUT_HINT = ("A shape error: which layout does each matrix have? GPT-2's Conv1D stores W as "
               "[in, out]; lora_A is (r, in) and lora_B is (out, r), as nn.Linear stores them.")

# ------------------------------------------------------------------ shared inputs


def _layer(rng, n_in, n_out, r, N=5, alpha=6.0):
    return {"x": rng.standard_normal((N, n_in)), "W": rng.standard_normal((n_in, n_out)) * 0.5,
            "b": rng.standard_normal(n_out), "A": rng.standard_normal((r, n_in)),
            "B": rng.standard_normal((n_out, r)), "lora_alpha": alpha, "r": r}


def _layer_cases(rng):
    """A square layer first (attn.c_proj: every layout mistake still runs, and is told
    apart by its values), then fused c_attn (out = 3·in) and an MLP-like layer."""
    return [_layer(rng, 8, 8, 4), _layer(rng, 8, 24, 4, alpha=16.0), _layer(rng, 6, 10, 2, N=7)]


def _pick(case, *names):
    return {n: case[n] for n in names}


# ------------------------------------------------------------------ 2.1 LoRA forward


def _lora_ref(x, W, b, A, B, lora_alpha, r):
    h, _ = linear_forward(x, W, b)
    delta, _ = lora.lora_forward(x, A, B, lora.lora_scaling(lora_alpha, r))
    return h + delta


def _lora_wrong(kind):
    def wrong(x, W, b, A, B, lora_alpha, r):
        s = {"alpha_not_over_r": lora_alpha, "rslora_scaling": lora_alpha / math.sqrt(r),
             "r_over_alpha": r / lora_alpha}.get(kind, lora_alpha / r)
        base = (x @ W.T if kind == "W_transposed" else x @ W) + (0 if kind == "bias_missing" else b)
        upd = x @ B @ A if kind == "A_B_swapped" else x @ A.T @ B.T
        if kind == "base_missing":
            return s * upd
        return base + s * upd
    return wrong


def _lora_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _layer_cases(rng)[1]
    h = fn(*(c[a].copy() if isinstance(c[a], np.ndarray) else c[a] for a in LORA_FORWARD.args))
    t = {k: torch.tensor(v) for k, v in c.items() if isinstance(v, np.ndarray)}
    th = t["x"] @ t["W"] + t["b"] + (c["lora_alpha"] / c["r"]) * (t["x"] @ t["A"].T @ t["B"].T)
    return "torch", torch_errors({"h": (h, th)})


LORA_FORWARD = Exercise(
    "2.1", "lora_forward", "LoRA on a Conv1D layer, forward",
    args=("x", "W", "b", "A", "B", "lora_alpha", "r"), outputs=("h",), reference=_lora_ref,
    cases=_layer_cases,
    misconceptions=[
        Misconception("alpha_not_over_r", "What is LoRA's scaling: lora_alpha itself, or "
                      "lora_alpha divided by something?", _lora_wrong("alpha_not_over_r")),
        Misconception("rslora_scaling", "That is rsLoRA's scaling (use_rslora=True). What does "
                      "plain LoRA divide lora_alpha by?", _lora_wrong("rslora_scaling")),
        Misconception("r_over_alpha", "The scaling is upside down: which of lora_alpha and r is "
                      "on top?", _lora_wrong("r_over_alpha")),
        Misconception("A_B_swapped", "Which of A and B sees x first? A (r, in) goes down to the "
                      "rank, B (out, r) comes back up.", _lora_wrong("A_B_swapped")),
        Misconception("W_transposed", "GPT-2's Conv1D stores W as [in, out], the transpose of "
                      "nn.Linear: how does x meet W then?", _lora_wrong("W_transposed")),
        Misconception("bias_missing", "The frozen layer has a bias too: is it in your output?",
                      _lora_wrong("bias_missing")),
        Misconception("base_missing", "LoRA adds an update to the frozen layer's output: is the "
                      "frozen x·W + b still there?", _lora_wrong("base_missing")),
    ],
    on_exception=shape_error_hint(LAYOUT_HINT), with_torch=_lora_torch)

# ------------------------------------------------------------------ 2.2 LoRA backward


def _lorab_ref(dh, x, W, A, B, lora_alpha, r):
    s = lora.lora_scaling(lora_alpha, r)
    dx_base, _, _ = linear_backward(dh, None, W, need_params=False)
    _, cache = lora.lora_forward(x, A, B, s)
    dx, dA, dB = lora.lora_backward(dh, cache, A, B, s)
    return dx_base + dx, dA, dB


def _lorab_wrong(kind):
    def wrong(dh, x, W, A, B, lora_alpha, r):
        s = lora_alpha if kind == "alpha_not_over_r" else lora_alpha / r
        if kind == "scaling_missing":
            s = 1.0
        u = x @ A.T
        du = s * (dh @ B)
        dB = s * dh.T @ u
        dA = du.T @ x
        dx_lora, dx_base = du @ A, dh @ W.T
        dx = {"dx_base_missing": dx_lora, "dx_lora_missing": dx_base}.get(kind, dx_base + dx_lora)
        if kind == "dA_transposed":
            dA = dA.T
        if kind == "dB_transposed":
            dB = dB.T
        return dx, dA, dB
    return wrong


def _lorab_cases(rng):
    out = []
    for c in _layer_cases(rng):
        c = dict(c)
        c["dh"] = rng.standard_normal((c["x"].shape[0], c["W"].shape[1]))
        out.append(c)
    return out


def _lorab_fd(fn, rng):
    c = _layer(rng, 4, 6, 2, N=3)
    dh = rng.standard_normal((3, 6))
    dx, dA, dB = fn(dh.copy(), c["x"].copy(), c["W"].copy(), c["A"].copy(), c["B"].copy(),
                    c["lora_alpha"], c["r"])

    def f():
        out = _lora_ref(c["x"], c["W"], c["b"], c["A"], c["B"], c["lora_alpha"], c["r"])
        return float(np.sum(out * dh))

    return fd_errors(f, {"dx": c["x"], "dA": c["A"], "dB": c["B"]}, {"dx": dx, "dA": dA, "dB": dB})


def _lorab_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _lorab_cases(rng)[1]
    dx, dA, dB = fn(*(c[a].copy() if isinstance(c[a], np.ndarray) else c[a] for a in LORA_BACKWARD.args))
    t = {k: torch.tensor(v, requires_grad=True) for k, v in c.items() if isinstance(v, np.ndarray)}
    h = t["x"] @ t["W"] + t["b"] + (c["lora_alpha"] / c["r"]) * (t["x"] @ t["A"].T @ t["B"].T)
    h.backward(t["dh"].detach())
    return "torch autograd", torch_errors({"dx": (dx, t["x"].grad), "dA": (dA, t["A"].grad),
                                           "dB": (dB, t["B"].grad)})


LORA_BACKWARD = Exercise(
    "2.2", "lora_backward", "LoRA on a Conv1D layer, backward",
    args=("dh", "x", "W", "A", "B", "lora_alpha", "r"), outputs=("dx", "dA", "dB"),
    reference=_lorab_ref, cases=_lorab_cases,
    misconceptions=[
        Misconception("dx_base_missing", "W is frozen, but is x? The gradient reaching x flows "
                      "through the frozen path as well as through the update.",
                      _lorab_wrong("dx_base_missing")),
        Misconception("dx_lora_missing", "x also feeds the low-rank update: does dx have a "
                      "term from it?", _lorab_wrong("dx_lora_missing")),
        Misconception("dA_transposed", "A gradient has the shape of its parameter: what shape "
                      "is A?", _lorab_wrong("dA_transposed")),
        Misconception("dB_transposed", "A gradient has the shape of its parameter: what shape "
                      "is B?", _lorab_wrong("dB_transposed")),
        Misconception("scaling_missing", "The update is multiplied by the scaling in the "
                      "forward: does that factor reach the gradients?", _lorab_wrong("scaling_missing")),
        Misconception("alpha_not_over_r", "Which scaling did the forward use: lora_alpha, or "
                      "lora_alpha divided by something?", _lorab_wrong("alpha_not_over_r")),
    ],
    on_exception=shape_error_hint(LAYOUT_HINT), finite_differences=_lorab_fd,
    with_torch=_lorab_torch)

# ------------------------------------------------------------------ 2.3 LoRA merge


def _merge_ref(W, A, B, lora_alpha, r):
    return lora.merge_weight(W, A, B, lora.lora_scaling(lora_alpha, r))[0]


def _merge_wrong(kind):
    def wrong(W, A, B, lora_alpha, r):
        s = {"alpha_not_over_r": lora_alpha, "scaling_missing": 1.0}.get(kind, lora_alpha / r)
        delta = (B @ A) if kind == "nn_linear_layout" else (A.T @ B.T)
        if kind == "delta_only":
            return s * delta
        if kind == "subtracted":
            return W - s * delta
        return W + s * delta
    return wrong


def _merge_cases(rng):
    return [_pick(c, "W", "A", "B", "lora_alpha", "r") for c in _layer_cases(rng)]


def _merge_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _merge_cases(rng)[1]
    Wm = fn(*(c[a].copy() if isinstance(c[a], np.ndarray) else c[a] for a in LORA_MERGE.args))
    x = rng.standard_normal((4, c["W"].shape[0]))
    t = {k: torch.tensor(v) for k, v in c.items() if isinstance(v, np.ndarray)}
    tx = torch.tensor(x)
    unmerged = tx @ t["W"] + (c["lora_alpha"] / c["r"]) * (tx @ t["A"].T @ t["B"].T)
    return "torch (x @ merged = the unmerged layer's output)", torch_errors({"x @ W'": (x @ Wm, unmerged)})


LORA_MERGE = Exercise(
    "2.3", "lora_merge", "merging LoRA into GPT-2's Conv1D weight",
    args=("W", "A", "B", "lora_alpha", "r"), outputs=("W_merged",), reference=_merge_ref,
    cases=_merge_cases,
    misconceptions=[
        Misconception("nn_linear_layout", "B·A is in nn.Linear's (out, in) layout; W here is "
                      "Conv1D's [in, out]. Does your update have W's layout?",
                      _merge_wrong("nn_linear_layout")),
        Misconception("alpha_not_over_r", "The merged weight must give the same output as the "
                      "unmerged layer: which scaling did the forward use?",
                      _merge_wrong("alpha_not_over_r")),
        Misconception("scaling_missing", "The forward scales the update: is your merged update "
                      "scaled?", _merge_wrong("scaling_missing")),
        Misconception("delta_only", "Merging adds the update to the frozen weight: is W in "
                      "your result?", _merge_wrong("delta_only")),
        Misconception("subtracted", "Merging adds the update; check the sign.",
                      _merge_wrong("subtracted")),
    ],
    on_exception=shape_error_hint(LAYOUT_HINT), with_torch=_merge_torch)

# ------------------------------------------------------------------ 2.4 DoRA's column norm


def _norm_ref(W, A, B, lora_alpha, r):
    return lora.dora_weight_norm(W, A, B, lora.lora_scaling(lora_alpha, r))


def _norm_wrong(kind):
    def wrong(W, A, B, lora_alpha, r):
        s = lora_alpha if kind == "alpha_not_over_r" else lora_alpha / r
        V = W + s * ((B @ A) if kind == "nn_linear_layout" else (A.T @ B.T))
        if kind == "base_only":
            V = W
        sq = np.sum(V * V, axis=1 if kind == "wrong_axis" else 0)
        return sq if kind == "squared" else np.sqrt(sq)
    return wrong


def _norm_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _merge_cases(rng)[1]
    n = fn(*(c[a].copy() if isinstance(c[a], np.ndarray) else c[a] for a in DORA_NORM.args))
    t = {k: torch.tensor(v) for k, v in c.items() if isinstance(v, np.ndarray)}
    V = t["W"] + (c["lora_alpha"] / c["r"]) * (t["B"] @ t["A"]).T
    return "torch.linalg.norm", torch_errors({"norm": (n, torch.linalg.norm(V, dim=0))})


DORA_NORM = Exercise(
    "2.4", "dora_weight_norm", "DoRA's column norm of the adapted weight",
    args=("W", "A", "B", "lora_alpha", "r"), outputs=("norm",), reference=_norm_ref,
    cases=_merge_cases,
    misconceptions=[
        Misconception("wrong_axis", "DoRA keeps one magnitude per output: over which axis of the "
                      "[in, out] weight is each norm taken?", _norm_wrong("wrong_axis")),
        Misconception("base_only", "Whose norm is it: the frozen weight's, or the adapted "
                      "weight's (frozen + update)?", _norm_wrong("base_only")),
        Misconception("squared", "A norm or a squared norm?", _norm_wrong("squared")),
        Misconception("alpha_not_over_r", "The adapted weight carries LoRA's scaling: which "
                      "one?", _norm_wrong("alpha_not_over_r")),
        Misconception("nn_linear_layout", "Is the update in W's [in, out] layout before you add "
                      "it?", _norm_wrong("nn_linear_layout")),
    ],
    on_exception=shape_error_hint(LAYOUT_HINT), with_torch=_norm_torch)

# ------------------------------------------------------------------ 2.5 DoRA forward


def _dora_parts(x, W, A, B, magnitude, lora_alpha, r):
    s = lora.lora_scaling(lora_alpha, r)
    base, _ = linear_forward(x, W, None)
    delta, _ = lora.lora_forward(x, A, B, s)
    norm = lora.dora_weight_norm(W, A, B, s)
    return base, delta, norm, s


def _dora_ref(x, W, b, A, B, magnitude, lora_alpha, r):
    base, delta, norm, _ = _dora_parts(x, W, A, B, magnitude, lora_alpha, r)
    extra, _ = lora.dora_forward(base, delta, magnitude, norm)
    return base + b + extra


def _dora_wrong(kind):
    def wrong(x, W, b, A, B, magnitude, lora_alpha, r):
        s = lora_alpha / r
        V = W + s * A.T @ B.T
        norm = np.sqrt(np.sum((W if kind == "norm_of_base" else V) ** 2,
                              axis=1 if kind == "wrong_axis" else 0))
        g = magnitude / norm
        if kind == "no_normalisation":
            g = magnitude
        if kind == "magnitude_scales_bias":
            return (x @ V + b) * g
        if kind == "magnitude_on_update_only":
            return x @ W + b + g * (s * x @ A.T @ B.T)
        return (x @ V) * g + b
    return wrong


def _dora_cases(rng):
    out = []
    for c in _layer_cases(rng):
        c = dict(c)
        c["magnitude"] = np.abs(rng.standard_normal(c["W"].shape[1])) + 0.5
        out.append(c)
    return out


def _dora_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _dora_cases(rng)[1]
    h = fn(*(c[a].copy() if isinstance(c[a], np.ndarray) else c[a] for a in DORA_FORWARD.args))
    t = {k: torch.tensor(v) for k, v in c.items() if isinstance(v, np.ndarray)}
    V = t["W"] + (c["lora_alpha"] / c["r"]) * (t["B"] @ t["A"]).T
    th = t["x"] @ (t["magnitude"] * V / torch.linalg.norm(V, dim=0)) + t["b"]
    return "torch", torch_errors({"h": (h, th)})


DORA_FORWARD = Exercise(
    "2.5", "dora_forward", "DoRA on a Conv1D layer, forward",
    args=("x", "W", "b", "A", "B", "magnitude", "lora_alpha", "r"), outputs=("h",),
    reference=_dora_ref, cases=_dora_cases,
    misconceptions=[
        Misconception("wrong_axis", "One magnitude per output column: is the norm you divide by "
                      "taken over the right axis?", _dora_wrong("wrong_axis")),
        Misconception("norm_of_base", "Which weight is normalised: the frozen one, or the "
                      "adapted one?", _dora_wrong("norm_of_base")),
        Misconception("no_normalisation", "DoRA splits the weight into a magnitude and a "
                      "direction: is your direction a unit vector per column?",
                      _dora_wrong("no_normalisation")),
        Misconception("magnitude_scales_bias", "The magnitude rescales the weight's columns: "
                      "does it touch the bias?", _dora_wrong("magnitude_scales_bias")),
        Misconception("magnitude_on_update_only", "The magnitude and the norm act on the whole "
                      "adapted weight, frozen part included: does x·W0 get them too?",
                      _dora_wrong("magnitude_on_update_only")),
    ],
    on_exception=shape_error_hint(LAYOUT_HINT), with_torch=_dora_torch)

# ------------------------------------------------------------------ 2.6 DoRA backward


def _dorab_ref(dh, x, W, A, B, magnitude, lora_alpha, r):
    base, delta, norm, s = _dora_parts(x, W, A, B, magnitude, lora_alpha, r)
    _, dcache = lora.dora_forward(base, delta, magnitude, norm)
    dbase, ddelta, dm = lora.dora_backward(dh, dcache)
    _, lcache = lora.lora_forward(x, A, B, s)
    dx_l, dA, dB = lora.lora_backward(ddelta, lcache, A, B, s)
    dx = linear_backward(dh + dbase, None, W, need_params=False)[0] + dx_l
    return dx, dA, dB, dm


def _dorab_wrong(kind):
    def wrong(dh, x, W, A, B, magnitude, lora_alpha, r):
        s = lora_alpha / r
        V = W + s * A.T @ B.T
        norm = np.sqrt(np.sum(V * V, axis=0))
        g = magnitude / norm
        G = x.T @ dh                                            # (in, out) dL/d(effective W)
        dV = G * g
        if kind == "norm_not_detached":                         # d/dV of m ⊙ V / ‖V‖, all of it
            dV = dV - V * (magnitude / norm ** 3) * np.sum(G * V, axis=0)
        if kind == "gate_missing":
            dV = G * 1.0
        dA = s * B.T @ dV.T
        dB = s * dV.T @ A.T
        dx = dh @ (V * g).T
        dm = np.sum(G * V, axis=0) / norm
        if kind == "dm_not_normalised":
            dm = np.sum(G * V, axis=0)
        return dx, dA, dB, dm
    return wrong


def _dorab_cases(rng):
    out = []
    for c in _dora_cases(rng):
        c = dict(c)
        c["dh"] = rng.standard_normal((c["x"].shape[0], c["W"].shape[1]))
        out.append(c)
    return out


def _dorab_fd(fn, rng):
    """Finite differences with the norm held constant (the paper's §4.3, as peft)."""
    c = _dora_cases(rng)[2]
    x, W, b, A, B, m = (c[k] for k in ("x", "W", "b", "A", "B", "magnitude"))
    dh = rng.standard_normal((x.shape[0], W.shape[1]))
    s = lora.lora_scaling(c["lora_alpha"], c["r"])
    norm = lora.dora_weight_norm(W, A, B, s).copy()             # a constant: detached

    def f():
        extra, _ = lora.dora_forward(x @ W, lora.lora_forward(x, A, B, s)[0], m, norm)
        return float(np.sum((x @ W + b + extra) * dh))
    dx, dA, dB, dm = fn(dh.copy(), x.copy(), W.copy(), A.copy(), B.copy(), m.copy(),
                        c["lora_alpha"], c["r"])
    # dx, dA, dB, dm of the detached forward; the norm does not move with x or m, and for
    # A and B it is held at its value (that is what "detached" means)
    return fd_errors(f, {"dx": x, "dA": A, "dB": B, "dmagnitude": m},
                     {"dx": dx, "dA": dA, "dB": dB, "dmagnitude": dm})


def _dorab_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _dorab_cases(rng)[1]
    dx, dA, dB, dm = fn(*(c[a].copy() if isinstance(c[a], np.ndarray) else c[a] for a in DORA_BACKWARD.args))
    t = {k: torch.tensor(v, requires_grad=True) for k, v in c.items() if isinstance(v, np.ndarray)}
    V = t["W"] + (c["lora_alpha"] / c["r"]) * (t["B"] @ t["A"]).T
    norm = torch.linalg.norm(V, dim=0).detach()                 # peft: weight_norm.detach()
    h = t["x"] @ (t["magnitude"] * V / norm) + t["b"]
    h.backward(t["dh"].detach())
    return "torch autograd, norm detached as in peft", torch_errors(
        {"dx": (dx, t["x"].grad), "dA": (dA, t["A"].grad), "dB": (dB, t["B"].grad),
         "dmagnitude": (dm, t["magnitude"].grad)})


DORA_BACKWARD = Exercise(
    "2.6", "dora_backward", "DoRA on a Conv1D layer, backward (the norm detached)",
    args=("dh", "x", "W", "A", "B", "magnitude", "lora_alpha", "r"),
    outputs=("dx", "dA", "dB", "dmagnitude"), reference=_dorab_ref, cases=_dorab_cases,
    misconceptions=[
        Misconception("norm_not_detached", "DoRA's paper (§4.3) and peft treat the column norm "
                      "as a constant in backward: does your gradient flow through the norm?",
                      _dorab_wrong("norm_not_detached")),
        Misconception("gate_missing", "The update is multiplied by m / ‖·‖ in the forward: does "
                      "that factor reach dA and dB?", _dorab_wrong("gate_missing")),
        Misconception("dm_not_normalised", "m multiplies the direction V / ‖V‖, not V: what does "
                      "that give for dm?", _dorab_wrong("dm_not_normalised")),
    ],
    on_exception=shape_error_hint(LAYOUT_HINT), finite_differences=_dorab_fd,
    with_torch=_dorab_torch)

EXERCISES = [LORA_FORWARD, LORA_BACKWARD, LORA_MERGE, DORA_NORM, DORA_FORWARD, DORA_BACKWARD]
