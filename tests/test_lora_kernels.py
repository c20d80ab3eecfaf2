"""The Numba kernels of minipeft.kernels.lora against their NumPy twins in
minipeft.peft.lora: every output, cache included, in float32 and float64, with and
without dropout, on a non-contiguous x and B."""
from __future__ import annotations

import inspect
import io

import numpy as np
import pytest

from minipeft.kernels import lora as K
from minipeft.peft import lora as T
from minipeft.testing import assert_close

TOL = {
    np.float64: 1e-12,   # same math, another summation order (BLAS or loop vs NumPy)
    np.float32: 1e-5,    # float32 accumulation over `in` (and over N for dA, dB, dmagnitude)
}
N, C_IN, C_OUT, R = 17, 48, 72, 4


def check(ours: dict, ref: dict, dtype):
    """Every tensor within TOL[dtype] of the twin, and of the input dtype."""
    assert_close(ours, ref, TOL[dtype])
    wrong = {k: v.dtype for k, v in ours.items() if np.asarray(v).dtype != dtype}
    assert not wrong, f"dtypes differ from {np.dtype(dtype)}: {wrong}"


def make(dtype, masked, seed=0):
    """Random LoRA/DoRA inputs; x is a column slice and B a transpose (both strided)."""
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.standard_normal(shape).astype(dtype)
    x = f(N, C_IN + 5)[:, 2:2 + C_IN]                    # (N, in), not contiguous
    B = f(R, C_OUT).T                                    # (out, r), B = 0 would hide half the math
    assert not x.flags.c_contiguous and not B.flags.c_contiguous
    mask = T.dropout_mask(rng, x.shape, 0.1, np.dtype(dtype)) if masked else None
    return dict(x=x, A=f(R, C_IN), B=B, mask=mask, W=f(C_IN, C_OUT), ddelta=f(N, C_OUT),
                base=f(N, C_OUT), dextra=f(N, C_OUT), magnitude=1 + rng.random(C_OUT).astype(dtype))


DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64])
MASKED = pytest.mark.parametrize("masked", [False, True], ids=["no_dropout", "dropout"])
SCALING = T.lora_scaling(12, R)   # 3, not a power of two: s·(u Bᵀ) and u (s B)ᵀ round apart


@DTYPES
@MASKED
def test_lora_forward_and_backward_match_twin(dtype, masked):
    d = make(dtype, masked)
    args = (d["A"], d["B"], SCALING)
    delta, (xd, u) = K.lora_forward(d["x"], *args, mask=d["mask"])
    delta_t, (xd_t, u_t) = T.lora_forward(d["x"], *args, mask=d["mask"])
    check({"delta": delta, "xd": xd, "u": u}, {"delta": delta_t, "xd": xd_t, "u": u_t}, dtype)
    # the same cache into both backwards: the twin's, whose xd is the strided x itself
    grads = K.lora_backward(d["ddelta"], (xd_t, u_t), *args, mask=d["mask"])
    grads_t = T.lora_backward(d["ddelta"], (xd_t, u_t), *args, mask=d["mask"])
    names = ("dx", "dA", "dB")
    check(dict(zip(names, grads)), dict(zip(names, grads_t)), dtype)


@DTYPES
def test_dora_norm_forward_backward_match_twin(dtype):
    d = make(dtype, masked=False)
    norm = K.dora_weight_norm(d["W"], d["A"], d["B"], SCALING)
    norm_t = T.dora_weight_norm(d["W"], d["A"], d["B"], SCALING)
    check({"norm": norm}, {"norm": norm_t}, dtype)
    delta = T.lora_forward(d["x"], d["A"], d["B"], SCALING)[0]
    base = d["base"][:, ::-1]                            # strided too
    extra, cache = K.dora_forward(base, delta, d["magnitude"], norm_t)
    extra_t, cache_t = T.dora_forward(base, delta, d["magnitude"], norm_t)
    names = T.DoraCache._fields
    check({"extra": extra, **dict(zip(names, cache))},
          {"extra": extra_t, **dict(zip(names, cache_t))}, dtype)
    grads = K.dora_backward(d["dextra"], cache_t)
    grads_t = T.dora_backward(d["dextra"], cache_t)
    names = ("dbase", "ddelta", "dmagnitude")
    check(dict(zip(names, grads)), dict(zip(names, grads_t)), dtype)


@DTYPES
def test_dora_weight_norm_in_blocks_matches_twin(dtype, monkeypatch):
    """Blocks of 5 rows of s (BA)ᵀ over in = 48: nine whole blocks and a last one of 3."""
    d = make(dtype, masked=False)
    monkeypatch.setattr(K, "_BLOCK_BYTES", 5 * C_OUT * np.dtype(dtype).itemsize)
    norm = K.dora_weight_norm(d["W"], d["A"], d["B"], SCALING)
    check({"norm": norm}, {"norm": T.dora_weight_norm(d["W"], d["A"], d["B"], SCALING)}, dtype)


@DTYPES
def test_dora_merged_forward_backward_match_twin(dtype):
    d = make(dtype, masked=False)
    norm = T.dora_weight_norm(d["W"], d["A"], d["B"], SCALING)
    delta = T.lora_forward(d["x"], d["A"], d["B"], SCALING)[0]
    xw, bias = d["base"][:, ::-1], d["magnitude"][::-1] - 1.5    # strided; a bias of both signs
    out, cache = K.dora_merged_forward(xw, bias, delta, d["magnitude"], norm)
    out_t, cache_t = T.dora_merged_forward(xw, bias, delta, d["magnitude"], norm)
    names = T.DoraCache._fields
    check({"out": out, **dict(zip(names, cache))}, {"out": out_t, **dict(zip(names, cache_t))}, dtype)
    dout = d["dextra"][:, ::-1]
    grads = K.dora_merged_backward(dout, cache_t)
    grads_t = T.dora_merged_backward(dout, cache_t)
    names = ("dmerged", "dmagnitude")
    check(dict(zip(names, grads)), dict(zip(names, grads_t)), dtype)


def test_dora_merged_form_is_peft_form_without_dropout():
    """base = x W0: b + g ⊙ (x W0 + delta) is x W0 + b + dora_forward's extra, and
    dora_merged_backward's g ⊙ dout is dout + dbase (through x W0) and ddelta, in float64."""
    d = make(np.float64, masked=False)
    norm = T.dora_weight_norm(d["W"], d["A"], d["B"], SCALING)
    delta = T.lora_forward(d["x"], d["A"], d["B"], SCALING)[0]
    xw, bias, m = d["base"], d["magnitude"] - 1.5, d["magnitude"]
    extra, cache = T.dora_forward(xw, delta, m, norm)
    out, cache_m = T.dora_merged_forward(xw, bias, delta, m, norm)
    dbase, ddelta, dm = T.dora_backward(d["dextra"], cache)
    dmerged, dm_m = T.dora_merged_backward(d["dextra"], cache_m)
    assert_close({"out": out, "dxw": dmerged, "ddelta": dmerged, "dmagnitude": dm_m},
                 {"out": xw + bias + extra, "dxw": d["dextra"] + dbase, "ddelta": ddelta, "dmagnitude": dm},
                 TOL[np.float64])


@pytest.mark.parametrize("name", ["lora_forward", "lora_backward", "dora_weight_norm", "dora_forward",
                                  "dora_backward", "dora_merged_forward", "dora_merged_backward"])
def test_kernel_has_its_twins_signature(name):
    """One for one: each kernel can replace the twin of the same name."""
    assert inspect.signature(getattr(K, name)) == inspect.signature(getattr(T, name))


def test_float32_kernels_compute_in_float32():
    """No silent upcast inside a kernel: the float32 outputs could hide one (a float32
    scalar minus the literal 1 is float64 in Numba), the compiled types cannot."""
    d = make(np.float32, masked=True)
    delta, cache = K.lora_forward(d["x"], d["A"], d["B"], SCALING, d["mask"])
    K.lora_backward(d["ddelta"], cache, d["A"], d["B"], SCALING, d["mask"])
    norm = K.dora_weight_norm(d["W"], d["A"], d["B"], SCALING)
    K.dora_backward(d["dextra"], K.dora_forward(d["base"], delta, d["magnitude"], norm)[1])
    _, cache = K.dora_merged_forward(d["base"], d["magnitude"] - 1, delta, d["magnitude"], norm)
    K.dora_merged_backward(d["dextra"], cache)
    for kernel in (K._masked, K._add_column_squares, K._dora_forward, K._dora_backward,
                   K._dora_merged_forward, K._dora_merged_backward):
        for sig in kernel.signatures:
            if "float64" in str(sig):
                continue
            text = io.StringIO()
            kernel.inspect_types(file=text, signature=sig)
            assert "float64" not in text.getvalue(), f"{kernel.__name__}{sig} computes in float64"
