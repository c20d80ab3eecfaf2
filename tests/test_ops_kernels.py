"""GPT-2's op kernels (minipeft/kernels/ops.py) equal their NumPy twins (minipeft/ops/),
values and gradients, float64 and float32, on ordinary and extreme inputs; and the whole
model gives the same loss and gradients with the kernels as with the twins."""
from __future__ import annotations

import numpy as np
import pytest

from minipeft import GPT2, GPT2Config
from minipeft import ops as T
from minipeft.kernels import ops as K
from minipeft.testing import cmp
from minipeft.train.pretrain import init_params

TOL = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])


def close(name, ours, ref, dtype):
    assert ours.dtype == ref.dtype == dtype, name
    assert cmp(name, ours, ref, TOL[dtype]) <= TOL[dtype]


@DTYPES
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["ordinary", "large"])
def test_layernorm(dtype, scale):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 48)) * scale + 0.3 * scale).astype(dtype)
    x[1, 2] = dtype(10000.3)                           # a constant row: exactly b
    g, b = rng.standard_normal(48).astype(dtype), rng.standard_normal(48).astype(dtype)
    (y_k, c_k), (y_t, c_t) = K.layernorm_forward(x, g, b, 1e-5), T.layernorm_forward(x, g, b, 1e-5)
    close("out", y_k, y_t, dtype)
    assert np.array_equal(y_k[1, 2], b)
    dout = rng.standard_normal(x.shape).astype(dtype)
    for a, r, name in zip(K.layernorm_backward(dout, c_k), T.layernorm_backward(dout, c_t),
                          ("dx", "dg", "db")):
        close(name, a, r, dtype)
    dx, dg, db = K.layernorm_backward(dout, c_k, need_params=False)
    assert dg is None and db is None


@DTYPES
def test_cross_entropy_fused_in_place(dtype):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((2, 6, 40)) * 4).astype(dtype)
    targets = rng.integers(0, 40, size=(2, 6))
    targets[0, 1] = targets[1, 5] = -100
    if dtype == np.float32:
        logits[1, 0, :3] = [3e38, -3e38, 0.0]          # finite loss, as the twin
    loss_t, dl_t = T.cross_entropy(logits, targets)
    buffer = logits.copy()
    loss_k, dl_k = K.cross_entropy(buffer, targets)
    assert dl_k is buffer                              # written over the logits
    assert abs(loss_k - loss_t) <= TOL[dtype] * abs(loss_t) and np.isfinite(loss_k)
    close("dlogits", dl_k, dl_t, dtype)
    assert not dl_k[0, 1].any() and not dl_k[1, 5].any()   # ignored rows: no gradient


@DTYPES
def test_model_with_kernels_equals_model_with_twins(dtype):
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=30)
    model = GPT2(cfg, init_params(cfg, seed=3)).astype(dtype)
    ids = np.random.default_rng(4).integers(0, 30, size=(2, 9))
    loss_k, grads_k = model.loss_and_grads(ids, ids)
    model.use_kernels = False
    loss_t, grads_t = model.loss_and_grads(ids, ids)
    assert abs(loss_k - loss_t) <= TOL[dtype] * abs(loss_t)
    for name in grads_t:
        close(name, grads_k[name], grads_t[name], dtype)


@DTYPES
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # the twin's x³, documented
def test_gelu_keeps_x_alone(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 7, 32)) * 3).astype(dtype)
    x[0, 0, :4] = [0.0, 150.0, -150.0, np.finfo(dtype).max]   # beyond |x| = 100 and at the top
    (y_k, c_k), (y_t, c_t) = K.gelu_forward(x), T.gelu_forward(x)
    assert np.array_equal(y_k, y_t) and c_k is x and c_t is x   # the same cache: x alone
    dout = rng.standard_normal(x.shape).astype(dtype)
    assert np.array_equal(K.gelu_backward(dout, c_k), T.gelu_backward(dout, c_t))
