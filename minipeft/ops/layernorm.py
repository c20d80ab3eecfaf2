"""Layer normalisation over the last axis (Ba, Kiros & Hinton 2016).

    mean = x.mean(-1);  var = ((x - mean)**2).mean(-1)       # biased, as torch
    xhat = (x - mean) / sqrt(var + eps);  out = xhat * g + b

Backward, with dxhat = dout * g and means over the C channels:
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
"""
from __future__ import annotations

import numpy as np


def layernorm_forward(x, g, b, eps):
    """x (..., C), g (C,), b (C,) -> out (..., C); cache = (xhat, rstd, g)."""
    mean = x.mean(axis=-1, keepdims=True)               # (..., 1)
    xc = x - mean                                       # (..., C)
    var = np.mean(xc * xc, axis=-1, keepdims=True)      # (..., 1)
    rstd = 1.0 / np.sqrt(var + eps)                     # (..., 1)
    xhat = xc * rstd                                    # (..., C)
    out = xhat * g + b
    return out, (xhat, rstd, g)


def layernorm_backward(dout, cache, need_params=True):
    """dout (..., C) -> (dx (..., C), dg (C,), db (C,)); dg, db None if not needed."""
    xhat, rstd, g = cache
    dg = db = None
    if need_params:
        C = dout.shape[-1]
        dg = np.einsum("nc,nc->c", dout.reshape(-1, C), xhat.reshape(-1, C))
        db = dout.reshape(-1, C).sum(axis=0)
    dxhat = dout * g                                    # out = xhat * g + b
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
    dx -= xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True)
    dx *= rstd
    return dx, dg, db
