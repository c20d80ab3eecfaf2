"""Part 1 — GPT-2's ops by hand: layernorm, GELU, causal attention, cross-entropy.

Each reference is the package's own op (``minipeft.ops``) wrapped to the student's
signature; each ``wrong`` is a known wrong answer, computed here only to recognise it.
"""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from .core import Exercise, Misconception, fd_errors, torch_errors

# ------------------------------------------------------------------ 1.1 layernorm forward


def _ln_ref(x, g, b, eps):
    return ops.layernorm_forward(x, g, b, eps)[0]


def _ln_parts(x, eps, ddof=0, axis=-1, eps_out=False, no_eps=False):
    mean = x.mean(axis=axis, keepdims=True)
    var = x.var(axis=axis, keepdims=True, ddof=ddof)
    if no_eps:
        return (x - mean) / np.sqrt(var)
    if eps_out:
        return (x - mean) / (np.sqrt(var) + eps)
    return (x - mean) / np.sqrt(var + eps)


def _ln_cases(rng):
    def case(shape, eps, scale=1.0, shift=0.0):
        C = shape[-1]
        return {"x": rng.standard_normal(shape) * scale + shift, "g": rng.standard_normal(C) + 1.0,
                "b": rng.standard_normal(C), "eps": eps}
    return [case((2, 3, 8), 0.5, 0.7), case((4, 16), 1e-5, 2.0, 3.0), case((1, 5, 7), 1e-3, 0.1)]


LAYERNORM_FORWARD = Exercise(
    "1.1", "layernorm_forward", "layer normalisation, forward",
    args=("x", "g", "b", "eps"), outputs=("out",), reference=_ln_ref, cases=_ln_cases,
    misconceptions=[
        Misconception("eps_outside_sqrt", "Where does ε go: inside the square root, or added to it?",
                      lambda x, g, b, eps: _ln_parts(x, eps, eps_out=True) * g + b),
        Misconception("unbiased_variance", "Which variance does layernorm use: divided by C, or by "
                      "C − 1? (torch's layer_norm and GPT-2 use the biased one.)",
                      lambda x, g, b, eps: _ln_parts(x, eps, ddof=1) * g + b),
        Misconception("wrong_axis", "Over which axis are the mean and the variance taken? Each "
                      "token is normalised on its own, over its channels.",
                      lambda x, g, b, eps: _ln_parts(x, eps, axis=0) * g + b),
        Misconception("eps_missing", "What keeps the division safe when a row is constant? Is ε "
                      "used at all?",
                      lambda x, g, b, eps: _ln_parts(x, eps, no_eps=True) * g + b),
        Misconception("gain_bias_swapped", "Which parameter multiplies and which one is added?",
                      lambda x, g, b, eps: _ln_parts(x, eps) * b + g),
        Misconception("affine_missing", "After normalising, does the output go through the "
                      "learned gain and bias?",
                      lambda x, g, b, eps: _ln_parts(x, eps)),
    ],
    with_torch=lambda fn, rng: _ln_torch(fn, rng))


def _ln_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _ln_cases(rng)[1]
    ours = fn(*(c[a] for a in ("x", "g", "b", "eps")))
    t = torch.nn.functional.layer_norm(torch.tensor(c["x"]), (c["x"].shape[-1],),
                                       torch.tensor(c["g"]), torch.tensor(c["b"]), c["eps"])
    return "torch.nn.functional.layer_norm", torch_errors({"out": (ours, t)})


# ------------------------------------------------------------------ 1.2 layernorm backward


def _lnb_ref(dout, x, g, eps):
    _, cache = ops.layernorm_forward(x, g, np.zeros_like(g), eps)
    return ops.layernorm_backward(dout, cache)


def _lnb_wrong(kind):
    def wrong(dout, x, g, eps):
        ddof = 1 if kind == "unbiased_variance" else 0
        mean = x.mean(-1, keepdims=True)
        rstd = 1.0 / np.sqrt(x.var(-1, keepdims=True, ddof=ddof) + eps)
        xhat = (x - mean) * rstd
        C = x.shape[-1]
        dg = (dout * xhat).reshape(-1, C).sum(0)
        db = dout.reshape(-1, C).sum(0)
        dxhat = dout if kind == "gain_not_chained" else dout * g
        mean_term = 0 if kind == "mean_term_missing" else dxhat.mean(-1, keepdims=True)
        xhat_term = 0 if kind == "xhat_term_missing" else xhat * (dxhat * xhat).mean(-1, keepdims=True)
        dx = (dxhat - mean_term - xhat_term) * (1.0 if kind == "rstd_missing" else rstd)
        if kind == "params_not_summed":
            return dx, dout * xhat, dout
        if kind == "dg_db_swapped":
            return dx, db, dg
        return dx, dg, db
    return wrong


def _lnb_cases(rng):
    def case(shape, eps):
        C = shape[-1]
        return {"dout": rng.standard_normal(shape), "x": rng.standard_normal(shape) * 1.5 + 0.3,
                "g": rng.standard_normal(C) + 1.0, "eps": eps}
    return [case((2, 3, 8), 0.5), case((5, 12), 1e-5), case((1, 4, 6), 1e-3)]


def _lnb_fd(fn, rng):
    c = _lnb_cases(rng)[0]
    x, g, dout, eps = c["x"][:1, :2], c["g"], c["dout"][:1, :2], c["eps"]
    b = rng.standard_normal(g.shape)
    dx, dg, db = fn(dout.copy(), x.copy(), g.copy(), eps)
    return fd_errors(lambda: float(np.sum(_ln_ref(x, g, b, eps) * dout)),
                     {"dx": x, "dg": g, "db": b}, {"dx": dx, "dg": dg, "db": db})


def _lnb_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _lnb_cases(rng)[1]
    dx, dg, db = fn(c["dout"].copy(), c["x"].copy(), c["g"].copy(), c["eps"])
    x = torch.tensor(c["x"], requires_grad=True)
    g = torch.tensor(c["g"], requires_grad=True)
    b = torch.zeros_like(g, requires_grad=True)
    y = torch.nn.functional.layer_norm(x, (x.shape[-1],), g, b, c["eps"])
    y.backward(torch.tensor(c["dout"]))
    return "torch autograd", torch_errors({"dx": (dx, x.grad), "dg": (dg, g.grad), "db": (db, b.grad)})


LAYERNORM_BACKWARD = Exercise(
    "1.2", "layernorm_backward", "layer normalisation, backward",
    args=("dout", "x", "g", "eps"), outputs=("dx", "dg", "db"), reference=_lnb_ref,
    cases=_lnb_cases,
    misconceptions=[
        Misconception("mean_term_missing", "Every x̂ of a row depends on the row's mean: which "
                      "term of dx comes from the mean?", _lnb_wrong("mean_term_missing")),
        Misconception("xhat_term_missing", "Every x̂ of a row depends on the row's variance: "
                      "which term of dx comes from it?", _lnb_wrong("xhat_term_missing")),
        Misconception("gain_not_chained", "The output is x̂·g + b: what does the chain rule "
                      "give for the gradient reaching x̂?", _lnb_wrong("gain_not_chained")),
        Misconception("rstd_missing", "x̂ = (x − mean) / √(var + ε): what happens to the "
                      "gradient on the way through that division?", _lnb_wrong("rstd_missing")),
        Misconception("params_not_summed", "g and b are shared by every token: how do the "
                      "gradients of all the tokens combine into one of shape (C,)?",
                      _lnb_wrong("params_not_summed")),
        Misconception("dg_db_swapped", "Which gradient goes with the gain (it multiplies x̂) "
                      "and which with the bias?", _lnb_wrong("dg_db_swapped")),
        Misconception("unbiased_variance", "Does your backward use the same variance as the "
                      "forward (divided by C, not C − 1)?", _lnb_wrong("unbiased_variance")),
    ],
    finite_differences=_lnb_fd, with_torch=_lnb_torch)

# ------------------------------------------------------------------ 1.3 GELU backward
_K, _A = math.sqrt(2.0 / math.pi), 0.044715


def _gelu_ref(dout, x):
    return ops.gelu_backward(dout, ops.gelu_forward(x)[1])


def _gelu_wrong(kind):
    def wrong(dout, x):
        t = np.tanh(_K * (x + _A * x ** 3))
        inner = 1 + (1 if kind == "cubic_factor_missing" else 3) * _A * x * x
        d = 0.5 * (1 + t)
        if kind != "product_rule_missing":
            d = d + 0.5 * x * (1 - t * t) * _K * inner
        if kind == "upstream_missing":
            return d
        if kind == "forward_instead":
            return 0.5 * x * (1 + t) * dout
        return d * dout
    return wrong


def _gelu_erf(dout, x):
    erf = np.vectorize(math.erf)
    return dout * (0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


def _gelu_cases(rng):
    return [{"dout": rng.standard_normal((3, 10)), "x": rng.standard_normal((3, 10)) * 2},
            {"dout": rng.standard_normal((2, 4, 6)), "x": rng.standard_normal((2, 4, 6)) * 3}]


def _gelu_fd(fn, rng):
    x, dout = rng.standard_normal((2, 5)) * 2, rng.standard_normal((2, 5))
    dx = fn(dout.copy(), x.copy())
    return fd_errors(lambda: float(np.sum(ops.gelu_forward(x)[0] * dout)), {"dx": x}, {"dx": dx})


def _gelu_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _gelu_cases(rng)[0]
    dx = fn(c["dout"].copy(), c["x"].copy())
    x = torch.tensor(c["x"], requires_grad=True)
    torch.nn.functional.gelu(x, approximate="tanh").backward(torch.tensor(c["dout"]))
    return "torch autograd of gelu(approximate='tanh')", torch_errors({"dx": (dx, x.grad)})


GELU_BACKWARD = Exercise(
    "1.3", "gelu_backward", "GELU (GPT-2's tanh form), backward",
    args=("dout", "x"), outputs=("dx",), reference=_gelu_ref, cases=_gelu_cases,
    misconceptions=[
        Misconception("erf_derivative", "Which GELU does GPT-2 use: the exact one with erf, or "
                      "the tanh approximation?", _gelu_erf),
        Misconception("product_rule_missing", "gelu(x) = 0.5·x·(1 + tanh(u)) is a product of "
                      "two things that depend on x: did the product rule give you both terms?",
                      _gelu_wrong("product_rule_missing")),
        Misconception("cubic_factor_missing", "What is the derivative of u = √(2/π)(x + "
                      "0.044715·x³)? Check the factor the power rule brings down.",
                      _gelu_wrong("cubic_factor_missing")),
        Misconception("upstream_missing", "A backward returns dL/dx, not dgelu/dx: where does "
                      "dout come in?", _gelu_wrong("upstream_missing")),
        Misconception("forward_instead", "This is the forward value times dout: the backward "
                      "needs the derivative of gelu.", _gelu_wrong("forward_instead")),
    ],
    finite_differences=_gelu_fd, with_torch=_gelu_torch)

# ------------------------------------------------------------------ 1.4 causal attention


def _attn_ref(q, k, v):
    allowed = ops.attention_mask_allowed(q.shape[-2], k.shape[-2])
    return ops.attention_forward(q, k, v, allowed)[0]


def _softmax(s, axis=-1):
    m = np.max(np.where(np.isfinite(s), s, -1e300), axis=axis, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(axis=axis, keepdims=True)


def _attn_wrong(kind):
    def wrong(q, k, v):
        T, hs = q.shape[-2], q.shape[-1]
        s = q @ np.swapaxes(k, -1, -2)
        s = s / {"no_scale": 1.0, "scale_by_d": hs}.get(kind, math.sqrt(hs))
        allowed = np.tri(T, dtype=bool)
        if kind == "mask_upper":
            allowed = allowed.T
        if kind == "mask_after_softmax":
            p = _softmax(s) * allowed
        elif kind == "no_mask":
            p = _softmax(s)
        else:
            p = _softmax(np.where(allowed, s, -np.inf), axis=-2 if kind == "softmax_wrong_axis" else -1)
        return p @ v
    return wrong


def _qkv(rng, B, NH, T, hs, scale=1.5):
    return {n: rng.standard_normal((B, NH, T, hs)) * scale for n in ("q", "k", "v")}


def _attn_cases(rng):
    return [_qkv(rng, 1, 2, 5, 4), _qkv(rng, 2, 3, 6, 8), _qkv(rng, 1, 1, 1, 4)]


def _attn_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _attn_cases(rng)[1]
    y = fn(*(c[n].copy() for n in "qkv"))
    t = torch.nn.functional.scaled_dot_product_attention(*(torch.tensor(c[n]) for n in "qkv"),
                                                         is_causal=True)
    return "torch scaled_dot_product_attention(is_causal=True)", torch_errors({"y": (y, t)})


ATTENTION_MISCONCEPTIONS = [
    Misconception("softmax_wrong_axis", "Each query's weights over the keys sum to 1: over which "
                  "axis of the scores is the softmax taken?", _attn_wrong("softmax_wrong_axis")),
    Misconception("no_scale", "How large are q·k dot products when head_size grows? What keeps "
                  "the softmax from saturating?", _attn_wrong("no_scale")),
    Misconception("scale_by_d", "Check the scaling of the scores: by head_size, or by a power "
                  "of it?", _attn_wrong("scale_by_d")),
    Misconception("mask_after_softmax", "Do the weights of each query still sum to 1? When must "
                  "the masked scores be removed: before the softmax or after it?",
                  _attn_wrong("mask_after_softmax")),
    Misconception("no_mask", "GPT-2 is causal: may a token look at the tokens after it?",
                  _attn_wrong("no_mask")),
    Misconception("mask_upper", "Which triangle of the (query, key) scores may a query see: its "
                  "past or its future?", _attn_wrong("mask_upper")),
]

CAUSAL_ATTENTION = Exercise(
    "1.4", "causal_attention", "causal self-attention (softmax with the mask), forward",
    args=("q", "k", "v"), outputs=("y",), reference=_attn_ref, cases=_attn_cases,
    misconceptions=ATTENTION_MISCONCEPTIONS, with_torch=_attn_torch)

# ------------------------------------------------------------------ 1.5 attention backward


def _attnb_ref(dy, q, k, v):
    allowed = ops.attention_mask_allowed(q.shape[-2], k.shape[-2])
    _, cache = ops.attention_forward(q, k, v, allowed)
    return ops.attention_backward(dy, cache)


def _attnb_wrong(kind):
    def wrong(dy, q, k, v):
        T, hs = q.shape[-2], q.shape[-1]
        scale = 1 / math.sqrt(hs)
        s = (q @ np.swapaxes(k, -1, -2)) * scale
        if kind != "mask_ignored":
            s = np.where(np.tri(T, dtype=bool), s, -np.inf)
        p = _softmax(s)
        dv = (p if kind == "dv_transposed" else np.swapaxes(p, -1, -2)) @ dy
        dp = dy @ np.swapaxes(v, -1, -2)
        ds = p * dp if kind == "softmax_jacobian_diagonal" else \
            p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
        if kind != "no_scale_in_backward":
            ds = ds * scale
        dq = ds @ k
        dk = (ds if kind == "dk_transposed" else np.swapaxes(ds, -1, -2)) @ q
        return dq, dk, dv
    return wrong


def _attnb_cases(rng):
    out = []
    for B, NH, T, hs in ((1, 2, 5, 4), (2, 2, 6, 8)):
        c = _qkv(rng, B, NH, T, hs)
        out.append({"dy": rng.standard_normal((B, NH, T, hs)), **c})
    return out


def _attnb_fd(fn, rng):
    c = _qkv(rng, 1, 1, 4, 3)
    dy = rng.standard_normal(c["q"].shape)
    dq, dk, dv = fn(dy.copy(), c["q"].copy(), c["k"].copy(), c["v"].copy())
    return fd_errors(lambda: float(np.sum(_attn_ref(c["q"], c["k"], c["v"]) * dy)),
                     {"dq": c["q"], "dk": c["k"], "dv": c["v"]}, {"dq": dq, "dk": dk, "dv": dv})


def _attnb_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _attnb_cases(rng)[1]
    dq, dk, dv = fn(*(c[n].copy() for n in ("dy", "q", "k", "v")))
    q, k, v = (torch.tensor(c[n], requires_grad=True) for n in "qkv")
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).backward(torch.tensor(c["dy"]))
    return "torch autograd of scaled_dot_product_attention", \
        torch_errors({"dq": (dq, q.grad), "dk": (dk, k.grad), "dv": (dv, v.grad)})


ATTENTION_BACKWARD = Exercise(
    "1.5", "causal_attention_backward", "causal self-attention, backward",
    args=("dy", "q", "k", "v"), outputs=("dq", "dk", "dv"), reference=_attnb_ref,
    cases=_attnb_cases,
    misconceptions=[
        Misconception("softmax_jacobian_diagonal", "Each softmax weight depends on every score of "
                      "its row, not only its own: what does the full Jacobian add?",
                      _attnb_wrong("softmax_jacobian_diagonal")),
        Misconception("no_scale_in_backward", "The scores were scaled in the forward: does that "
                      "factor reach dq and dk?", _attnb_wrong("no_scale_in_backward")),
        Misconception("dk_transposed", "Scores are (query, key): to get a gradient per key, which "
                      "axis of ds do you contract with q?", _attnb_wrong("dk_transposed")),
        Misconception("dv_transposed", "y = p·v: which side does p go on for dv, and is it "
                      "transposed?", _attnb_wrong("dv_transposed")),
        Misconception("mask_ignored", "Is your backward's p the same masked softmax as the "
                      "forward's?", _attnb_wrong("mask_ignored")),
    ],
    finite_differences=_attnb_fd, with_torch=_attnb_torch)

# ------------------------------------------------------------------ 1.6 cross-entropy


def _ce_ref(logits, targets):
    loss, cache = ops.cross_entropy_forward(logits, targets)
    return loss, ops.cross_entropy_backward(1.0, cache)


def _ce_wrong(kind):
    def wrong(logits, targets):
        V = logits.shape[-1]
        x, t = logits.reshape(-1, V), targets.reshape(-1)
        keep = t != -100
        if kind == "no_max_subtraction":
            with np.errstate(all="ignore"):
                e = np.exp(x)
                p = e / e.sum(-1, keepdims=True)
                logp = np.log(p)
        else:
            m = x.max(-1, keepdims=True)
            logp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
            p = np.exp(logp)
        tt = np.where(keep, t, 0)
        nll = -logp[np.arange(len(t)), tt]
        n = len(t) if kind == "mean_over_all" else keep.sum()
        if kind == "sum_not_mean":
            n = 1
        loss = float((nll * keep).sum() / n)
        onehot = np.zeros_like(x)
        onehot[np.arange(len(t)), tt] = 1
        d = p if kind == "onehot_missing" else p - onehot
        if kind != "ignored_rows_get_gradient":
            d = d * keep[:, None]
        if kind != "grad_not_divided":
            d = d / n
        return loss, d.reshape(logits.shape)
    return wrong


def _ce_cases(rng):
    def case(B, T, V, scale, n_ignored):
        t = rng.integers(0, V, size=(B, T))
        t.reshape(-1)[rng.permutation(B * T)[:n_ignored]] = -100
        return {"logits": rng.standard_normal((B, T, V)) * scale, "targets": t}
    return [case(2, 4, 7, 2.0, 3), case(3, 5, 11, 1.0, 5), case(1, 6, 5, 800.0, 2)]


def _ce_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _ce_cases(rng)[1]
    loss, d = fn(c["logits"].copy(), c["targets"].copy())
    x = torch.tensor(c["logits"], requires_grad=True)
    V = x.shape[-1]
    t = torch.nn.functional.cross_entropy(x.reshape(-1, V), torch.tensor(c["targets"]).reshape(-1),
                                          ignore_index=-100)
    t.backward()
    return "torch cross_entropy(ignore_index=-100)", torch_errors({"loss": (loss, t), "dlogits": (d, x.grad)})


def _ce_fd(fn, rng):
    c = _ce_cases(rng)[0]
    x, t = c["logits"][:1, :3], c["targets"][:1, :3].copy()
    t[0, 0] = -100
    t[0, 1] = 2
    _, d = fn(x.copy(), t.copy())
    return fd_errors(lambda: _ce_ref(x, t)[0], {"dlogits": x}, {"dlogits": d})


def _overflowed(outs, case):
    """nan or inf in the student's loss or gradient, on logits large enough to overflow exp."""
    big = np.max(np.abs(case["logits"])) > 100
    return big and not all(np.isfinite(np.asarray(o, dtype=np.float64)).all() for o in outs)


CROSS_ENTROPY = Exercise(
    "1.6", "cross_entropy", "cross-entropy with ignored labels (-100), loss and gradient",
    args=("logits", "targets"), outputs=("loss", "dlogits"), reference=_ce_ref, cases=_ce_cases,
    misconceptions=[
        Misconception("mean_over_all", "The loss is a mean: over which tokens? Do ignored tokens "
                      "(-100) count in the denominator?", _ce_wrong("mean_over_all")),
        Misconception("ignored_rows_get_gradient", "Should a token whose label is -100 send any "
                      "gradient back to its logits?", _ce_wrong("ignored_rows_get_gradient")),
        Misconception("no_max_subtraction", "What does exp do to a logit of 800? What can you "
                      "subtract from a row of logits without changing its softmax?",
                      _ce_wrong("no_max_subtraction"), detect=_overflowed),
        Misconception("sum_not_mean", "Is the loss a sum over tokens, or a mean?",
                      _ce_wrong("sum_not_mean")),
        Misconception("onehot_missing", "The gradient of −log softmax(x)[t] has two parts: one from "
                      "the normaliser and one from the target's own logit. Are both there?",
                      _ce_wrong("onehot_missing")),
        Misconception("grad_not_divided", "The loss is divided by the number of counted tokens: "
                      "is the gradient?", _ce_wrong("grad_not_divided")),
    ],
    finite_differences=_ce_fd, with_torch=_ce_torch)

EXERCISES = [LAYERNORM_FORWARD, LAYERNORM_BACKWARD, GELU_BACKWARD, CAUSAL_ATTENTION,
             ATTENTION_BACKWARD, CROSS_ENTROPY]
