"""Comparing tensors and checking gradients: the tools the tests use, for students too.

    from minipeft.testing import cmp, grad_check
    cmp("logits", ours, ref)              # logits: max_abs 1.2e-16 max_rel 3.5e-16
    cmp("logits", ours, ref, tol=1e-10)   # ... and OK / NOT OK against the tolerance

``max_rel`` is max|a - b| / max|b| over the whole tensor: the project's measure,
against torch and against finite differences alike. ``rel_error`` is CS231n's
elementwise max |a-b| / max(1e-8, |a|+|b|); beware that it blows up on entries
near zero (a gradient entry of 1e-8 cannot be resolved by central differences of
a function of size 1: their round-off is ~1e-16 / h ≈ 1e-10 absolute), which is
why grad_check reports max_rel.
"""
from __future__ import annotations

import numpy as np


def _numpy(x):
    if hasattr(x, "detach"):                       # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def max_rel(ours, ref) -> tuple[float, float]:
    """-> (max_abs, max_rel) with max_rel = max|a - b| / max|b|."""
    a, b = _numpy(ours), _numpy(ref)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: ours {a.shape} vs reference {b.shape}")
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return diff, diff / scale if scale > 0 else diff


def cmp(name: str, ours, ref, tol: float | None = None, verbose: bool = True) -> float:
    """Print ``name: max_abs … max_rel …`` (and OK/NOT OK against ``tol``); return max_rel."""
    abs_, rel = max_rel(ours, ref)
    status = "" if tol is None else ("  OK" if rel <= tol else f"  NOT OK (tol {tol:g})")
    if verbose:
        print(f"{name}: max_abs {abs_:.3e} max_rel {rel:.3e}{status}")
    return rel


def assert_close(ours: dict, ref: dict, tol: float, verbose: bool = True) -> dict[str, float]:
    """Compare two dicts of tensors name by name; raise listing every failure.

    Both dicts must hold the same names. Returns {name: max_rel}."""
    missing = sorted(set(ref) - set(ours))
    extra = sorted(set(ours) - set(ref))
    if missing or extra:
        raise AssertionError(f"names differ: missing {missing[:5]}, extra {extra[:5]}")
    rels = {k: cmp(k, ours[k], ref[k], tol, verbose) for k in ref}
    bad = {k: r for k, r in rels.items() if not r <= tol}
    if bad:
        lines = "\n".join(f"  {k}: max_rel {r:.3e}" for k, r in bad.items())
        raise AssertionError(f"{len(bad)} tensor(s) differ by more than {tol:g}:\n{lines}")
    return rels


def rel_error(a, b) -> float:
    """CS231n's relative error: max |a - b| / max(1e-8, |a| + |b|)."""
    a, b = _numpy(a).astype(np.float64), _numpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of a scalar function f() with respect to x, in place.

    f reads x (the very array), so each entry is nudged by ±h and restored."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad


def grad_check(forward, inputs: dict, backward, seed: int = 0, h: float = 1e-6) -> dict[str, float]:
    """Check a hand-written backward against central differences, float64.

    ``forward(**inputs) -> out`` (array); ``backward(dout) -> {name: grad}`` for
    (some of) the inputs, computed from the same forward. A seeded *random*
    upstream gradient ``dout`` is used (an all-ones one hides softmax and
    layernorm bugs): the scalar checked is sum(forward(...) * dout).
    Returns {name: max_rel} (max|analytic - numeric| / max|numeric|)."""
    rng = np.random.default_rng(seed)
    out = np.asarray(forward(**inputs))
    dout = rng.standard_normal(out.shape)
    analytic = backward(dout)
    errors = {}
    for name, g in analytic.items():
        x = inputs[name]
        num = numerical_gradient(lambda: float(np.sum(np.asarray(forward(**inputs)) * dout)), x, h)
        errors[name] = max_rel(g, num)[1]
    return errors
