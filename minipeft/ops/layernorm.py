"""Layer normalisation over the last axis (Ba, Kiros & Hinton 2016).

    mean = x.mean(-1);  var = ((x - mean)**2).mean(-1)       # biased, as torch
    xhat = (x - mean) / sqrt(var + eps);  out = xhat * g + b

Backward, with dxhat = dout * g and means over the C channels:
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))

Extreme inputs: one guard line centres x on its first entry before the mean is taken,
so a constant row gives x - mean = 0 exactly and its output is exactly b, as in torch (a
plain float32 mean of 768 copies of 10000.3 is off by ~1e-3, which against eps = 1e-5
makes |xhat| ~ 0.4); the shift leaves x - mean unchanged otherwise. The mean and the
variance accumulate in float64 (``dtype=``), so float32 activations up to ~1e38 neither
overflow (x² does beyond 1.8e19) nor lose the mean; only rows whose entries differ by
more than float32's largest value (3.4e38) overflow.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class LayerNormCache(NamedTuple):
    xhat: np.ndarray                        # (..., C) the normalised input
    rstd: np.ndarray                        # (..., 1) 1 / sqrt(var + eps)
    g: np.ndarray                           # (C,) the gain


def layernorm_forward(x, g, b, eps):
    """x (..., C), g (C,), b (C,) -> out (..., C); cache (xhat, rstd, g)."""
    x = x - x[..., :1]                                  # guard: a constant row gives exactly 0
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64)                  # (..., 1)
    xc = (x - mean).astype(x.dtype)                                          # (..., C)
    var = np.square(xc, dtype=np.float64).mean(axis=-1, keepdims=True)      # (..., 1) biased
    rstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)                        # (..., 1)
    xhat = xc * rstd                                                         # (..., C)
    out = xhat * g + b
    return out, LayerNormCache(xhat, rstd, g)


def layernorm_backward(dout, cache, need_params=True):
    """dout (..., C) -> (dx (..., C), dg (C,), db (C,)); dg, db None if not needed."""
    xhat, rstd, g = cache
    dg = db = None
    if need_params:
        C = dout.shape[-1]
        dg = np.einsum("nc,nc->c", dout.reshape(-1, C), xhat.reshape(-1, C))
        db = dout.reshape(-1, C).sum(axis=0)
    dxhat = dout * g                                    # out = xhat * g + b
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dg, db
