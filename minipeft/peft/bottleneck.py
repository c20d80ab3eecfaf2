"""Bottleneck adapters on GPT-2's residual additions: the math, forward and backward.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (arXiv:1902.00751),
put a small bottleneck MLP after each sub-layer of a frozen transformer and train only it:

    f(h) = s · (act(h W_dᵀ + b_d) W_uᵀ + b_u)        W_d (m, C) = adapter_down.0.weight
                                                    W_u (C, m) = adapter_up.weight
    m = int(C // reduction_factor)                  the bottleneck width

Pfeiffer et al. 2020 ("AdapterFusion", arXiv:2005.00247; "MAD-X", arXiv:2005.00052)
keep one adapter per block, after the feed-forward; He et al. 2021 (arXiv:2110.04366)
run it in parallel with the sub-layer, with a scaling s. AdapterHub (`adapters` 1.3.0)
implements all three as one configurable layer; this module follows its order of
operations exactly (adapters/methods/bottleneck.py, modeling.py: Adapter,
ParallelAdapter, pre_forward, forward, post_forward).

Where it sits in GPT-2 (adapters/models/gpt2/modeling_gpt2.py): the two residual
additions of each block are replaced, x2 = x + a by ``attention_adapters(a, x)``
(``mh_adapter``) and x3 = x2 + m by ``output_adapters(m, x2)`` (``output_adapter``).
GPT-2 passes no layer norm to them (it normalises *before* each sub-layer), so the
"original layer norm" options reduce to the residual addition. With x the residual
stream and a the sub-layer's output (N, C), one adapter location computes:

    sequential (Adapter)                        parallel (ParallelAdapter)
    h = a + x  if original_ln_before else a     h = x
    r = a      if residual_before_ln else h     r = a
    z = LN_before(h) if ln_before else h
    d = act(z W_dᵀ + b_d)                                      (N, m)
    o = drop(s ⊙ (d W_uᵀ + b_u))                               (N, C)
    o = LN_after(o + r)   if adapter_residual_before_ln (sequential only)
    o = LN_after(o) + r   otherwise                (LN_after only if ln_after)
    y = o + x  if original_ln_after else o                     the block's new x

so Pfeiffer (``seq_bn``) is y = x + a + s·f(x + a) after the MLP, Houlsby
(``double_seq_bn``) y = x + a + s·f(a) after attention and MLP, and the parallel
adapter (``par_bn``) y = x + a + s·f(x). A zero up-projection (``init_weights=
"mam_adapter"``) gives back x + a exactly. s is a float, or trained ("learned": one
number, "channel": one per channel, both starting at 1). LN_before/LN_after are new
nn.LayerNorm(C) (eps 1e-5), act is relu, leakyrelu (slope 0.01), swish = silu,
gelu (exact, erf: transformers' "gelu"), gelu_new (GPT-2's tanh form) or tanh.

Parameters per location: 2·C·m + m + C (+ 2C per layer norm, + 1 or C for a trained s).
Tensors keep AdapterHub's names and nn.Linear's [out, in] layout; the saved keys are
base_model.model.transformer.h.{i}.{attention,output}_adapters.<name> (bottleneck_model.py).

Every elementwise function here (bias + activation, scaling + dropout + residual) is
the NumPy twin of a Numba kernel in ``minipeft.kernels.bottleneck`` with the same
signature; ``adapter_forward`` / ``adapter_backward`` take either as ``ops``.
"""
from __future__ import annotations

import math
import sys
from typing import NamedTuple

import numpy as np

from ..ops import gelu_backward, gelu_forward, layernorm_backward, layernorm_forward

ACTIVATIONS = ("relu", "leakyrelu", "swish", "silu", "gelu", "gelu_new", "tanh")
INITS = ("bert", "houlsby", "mam_adapter")
LN_EPS = 1e-5                     # nn.LayerNorm's default, whatever GPT-2's epsilon
LEAKY_SLOPE = 0.01                # F.leaky_relu's default


# ------------------------------------------------------------------ initialisation
def init_adapter(init_weights: str, C: int, m: int, rng: np.random.Generator, dtype=np.float32):
    """AdapterHub's inits -> (W_d (m, C), b_d (m,), W_u (C, m), b_u (C,)); biases are 0.

    "bert":        W_d, W_u ~ N(0, 0.02²)                     (init_bert_weights)
    "houlsby":     W_d, W_u ~ N(0, 0.01²) truncated to ±0.02   (trunc_normal_)
    "mam_adapter": W_d ~ U(±1/√C) (kaiming_uniform_, a=√5), W_u = 0: starts at the base model
    """
    if init_weights == "bert":
        Wd, Wu = rng.normal(0.0, 0.02, (m, C)), rng.normal(0.0, 0.02, (C, m))
    elif init_weights == "houlsby":
        Wd, Wu = _truncated_normal(rng, (m, C), 0.01), _truncated_normal(rng, (C, m), 0.01)
    elif init_weights == "mam_adapter":
        bound = 1.0 / math.sqrt(C)                 # gain √(2/(1+5)) · √(3 / fan_in)
        Wd, Wu = rng.uniform(-bound, bound, (m, C)), np.zeros((C, m))
    else:
        raise ValueError(f"init_weights must be one of {INITS}, got {init_weights!r}")
    return Wd.astype(dtype), np.zeros(m, dtype), Wu.astype(dtype), np.zeros(C, dtype)


def _truncated_normal(rng, shape, std):
    """N(0, std²) restricted to [-2 std, 2 std] (redraws what falls outside)."""
    x = rng.normal(0.0, std, shape)
    out = np.abs(x) > 2 * std
    while out.any():
        x[out] = rng.normal(0.0, std, out.sum())
        out = np.abs(x) > 2 * std
    return x


# ------------------------------------------------------------------ caches
class BiasActCache(NamedTuple):
    h: np.ndarray                 # (N, m) the pre-activation p + b
    d: np.ndarray                 # (N, m) act(h)


class ScaleCache(NamedTuple):
    u: np.ndarray                 # (N, C) q + b, before the scaling
    mask: np.ndarray | None       # (N, C) the dropout mask, or None
    scaling: object               # a float, or the trained s: (1,) or (C,)


# ------------------------------------------------------------------ activations
_erf = np.frompyfunc(math.erf, 1, 1)        # NumPy has no erf; the kernel is the fast path


def _sigmoid(h):
    e = np.exp(-np.abs(h))                  # never overflows
    return np.where(h >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bias_act_forward(p, b, non_linearity):
    """p (N, m) = z W_dᵀ, b (m,) -> d = act(p + b) (N, m); cache (h, d)."""
    h = p + b                                                       # (N, m) pre-activation
    if non_linearity == "relu":
        d = np.maximum(h, 0)
    elif non_linearity == "leakyrelu":
        d = np.where(h > 0, h, h * LEAKY_SLOPE)
    elif non_linearity in ("swish", "silu"):
        d = h * _sigmoid(h)
    elif non_linearity == "gelu":                                   # 0.5 h (1 + erf(h / √2))
        d = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)).astype(h.dtype))
    elif non_linearity == "gelu_new":
        d = gelu_forward(h)[0]
    elif non_linearity == "tanh":
        d = np.tanh(h)
    else:
        raise ValueError(f"non_linearity must be one of {ACTIVATIONS}, got {non_linearity!r}")
    return d.astype(h.dtype, copy=False), BiasActCache(h, d)


def bias_act_backward(dd, cache, non_linearity):
    """dd (N, m) -> (dp (N, m), db (m,)): the derivative of act at h = p + b."""
    h, d = cache
    if non_linearity == "relu":
        dh = dd * (h > 0)
    elif non_linearity == "leakyrelu":
        dh = dd * np.where(h > 0, 1.0, LEAKY_SLOPE).astype(h.dtype)
    elif non_linearity in ("swish", "silu"):                        # σ (1 + h (1 − σ))
        sig = _sigmoid(h)
        dh = dd * sig * (1.0 + h * (1.0 - sig))
    elif non_linearity == "gelu":                                   # Φ(h) + h φ(h)
        cdf = 0.5 * (1.0 + _erf(h / math.sqrt(2.0)).astype(h.dtype))
        pdf = np.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)
        dh = dd * (cdf + h * pdf)
    elif non_linearity == "gelu_new":
        dh = gelu_backward(dd, gelu_forward(h)[1])
    elif non_linearity == "tanh":
        dh = dd * (1.0 - d * d)
    else:
        raise ValueError(f"non_linearity must be one of {ACTIVATIONS}, got {non_linearity!r}")
    dh = dh.astype(h.dtype, copy=False)
    return dh, dh.sum(axis=0)


# ------------------------------------------------------------------ scaling, dropout, residual
def scale_forward(q, b, scaling, mask=None, residual=None):
    """q (N, C) = d W_uᵀ -> o = drop(s · (q + b)) (+ residual) (N, C); cache (u, mask, s).
    scaling: a float, or a trained array (1,) ("learned") or (C,) ("channel")."""
    u = q + b                                                       # (N, C) adapter_up(d)
    o = u * scaling                                                 # up = up * self.scaling
    if mask is not None:
        o *= mask                                                   # output = self.dropout(up)
    if residual is not None:
        o += residual
    return o, ScaleCache(u, mask, scaling)


def scale_backward(do, cache):
    """do (N, C) -> (dq (N, C), db (C,), dscaling: None for a float s, else s's shape)."""
    u, mask, scaling = cache
    g = do if mask is None else do * mask                           # (N, C) d(s · u)
    dq = g * scaling
    ds = None
    if np.ndim(scaling):
        gu = g * u
        ds = gu.sum(axis=0) if np.size(scaling) > 1 else gu.sum(keepdims=True).reshape(1)
    return dq, dq.sum(axis=0), ds


# ------------------------------------------------------------------ one adapter location
class AdapterCache(NamedTuple):
    """What adapter_backward needs from adapter_forward."""
    z: np.ndarray                 # (N, C) the input of adapter_down (after LN_before)
    ln_before: tuple | None       # LN_before's cache, None without it
    d: np.ndarray                 # (N, m) act(z W_dᵀ + b_d)
    act: tuple                    # bias_act_forward's cache
    scale: tuple                  # scale_forward's cache
    ln_after: tuple | None        # LN_after's cache, None without it
    res_inside: bool              # r was added inside scale_forward (else after LN_after)


def down_name(config) -> str:
    """The Linear of AdapterHub's nn.Sequential adapter_down: .0, or .1 after an ln_before LayerNorm."""
    return "adapter_down.1" if config.ln_before else "adapter_down.0"


def adapter_forward(x, a, t, config, mask=None, ops=None):
    """x (N, C) the residual stream, a (N, C) the sub-layer's output -> (y (N, C), cache).

    ``t``: this location's tensors by AdapterHub's names (adapter_down.0.weight, ...);
    ``config``: a BottleneckConfig (its placement flags, non_linearity, scaling);
    ``mask``: a dropout mask (N, C) or None; ``ops``: this module or the kernels."""
    ops = ops or sys.modules[__name__]
    par = config.is_parallel
    # pre_forward
    if par:
        h, r = x, a
    else:
        h = a + x if config.original_ln_before else a
        r = a if config.residual_before_ln else h
    z, ln_b = h, None
    if config.ln_before:
        z, ln_b = layernorm_forward(h, t["adapter_norm_before.weight"], t["adapter_norm_before.bias"], LN_EPS)
    # forward: down, act, up, scaling, dropout
    dn = down_name(config)
    d, act_c = ops.bias_act_forward(z @ t[f"{dn}.weight"].T, t[f"{dn}.bias"], config.non_linearity)  # (N, m)
    res_inside = not config.ln_after or (config.adapter_residual_before_ln and not par)
    s = t.get("scaling", config.scaling)
    o, scale_c = ops.scale_forward(d @ t["adapter_up.weight"].T, t["adapter_up.bias"], s, mask,
                                   r if res_inside else None)                              # (N, C)
    ln_a = None
    if config.ln_after:
        o, ln_a = layernorm_forward(o, t["adapter_norm_after.weight"], t["adapter_norm_after.bias"], LN_EPS)
        if not res_inside:
            o = o + r
    # post_forward
    y = o + x if config.original_ln_after else o
    return y, AdapterCache(z, ln_b, d, act_c, scale_c, ln_a, res_inside)


def adapter_backward(dy, cache, t, config, ops=None):
    """dy (N, C) -> (dx (N, C), da (N, C), {tensor name: gradient})."""
    ops = ops or sys.modules[__name__]
    z, ln_b, d, act_c, scale_c, ln_a, res_inside = cache
    par, grads, dn = config.is_parallel, {}, down_name(config)
    # y = o + x
    dx = dy if config.original_ln_after else np.zeros_like(dy)
    do = dy
    dr = None if res_inside else dy                                 # o = LN_after(o) + r
    if ln_a is not None:
        do, grads["adapter_norm_after.weight"], grads["adapter_norm_after.bias"] = \
            layernorm_backward(do, ln_a)
    if res_inside:
        dr = do                                                     # o = drop(s · u) + r
    dq, grads["adapter_up.bias"], ds = ops.scale_backward(do, scale_c)
    if "scaling" in t:
        grads["scaling"] = ds
    # q = d W_uᵀ; d = act(z W_dᵀ + b_d)
    grads["adapter_up.weight"] = dq.T @ d                           # (C, m)
    dp, grads[f"{dn}.bias"] = ops.bias_act_backward(dq @ t["adapter_up.weight"], act_c,
                                                    config.non_linearity)
    grads[f"{dn}.weight"] = dp.T @ z                                # (m, C)
    dh = dp @ t[f"{dn}.weight"]                                     # (N, C)
    if ln_b is not None:
        dh, grads["adapter_norm_before.weight"], grads["adapter_norm_before.bias"] = \
            layernorm_backward(dh, ln_b)
    # pre_forward, backwards
    if par:                                                         # h = x, r = a
        return dx + dh, dr, grads
    if config.residual_before_ln:                                   # r = a
        da = dr + dh
    else:                                                           # r = h
        dh = dh + dr
        da = dh
    if config.original_ln_before:                                   # h = a + x
        dx = dx + dh
    return dx, da, grads
