"""GPT-2's op kernels (minipeft/kernels/ops.py) equal their NumPy twins (minipeft/ops/),
values and gradients, float64 and float32, on ordinary and extreme inputs; and the whole
model gives the same loss and gradients with the kernels as with the twins."""
from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from minipeft import GPT2, GPT2Config
from minipeft import ops as T
from minipeft.kernels import fastmath as F
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


# float32 GELU: the kernel's tanh is Eigen's rational function, not np.tanh, so float32
# results are held to bounds measured over 72 million inputs (kernels/ops.py's GELU
# comment), with about 10% margin, not to the twin's bits: the tanh within 6.09 ulp and
# 3.63e-7 of float64 np.tanh; gelu within 1.43e-6 and gelu' (dout = 1) within 4.53e-6 of
# the float32 twin. Where the twin's tanh is ±1 (|u| > 9, so |x| > 5.5) the two agree bit
# for bit, and so on every extreme input.
TANH_F32_ULP, TANH_F32_ABS = 6.5, 4e-7
GELU_F32_ABS = {"forward": 1.6e-6, "backward": 5e-6}


def same_bits(ours, ref):
    """Equal values, nan where nan, and the same sign on every zero."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    nan = np.isnan(ref)
    return (np.array_equal(np.isnan(ours), nan) and np.array_equal(ours[~nan], ref[~nan])
            and np.array_equal(np.signbit(ours[~nan]), np.signbit(ref[~nan])))


def float32_sweep(step=4096):
    """Every step-th float32 in (0, 10], both signs, and a 2^-12 grid on [-10, 10]."""
    top = int(np.array(10.0, np.float32).view(np.uint32))
    pos = np.arange(1, top + 1, step, dtype=np.uint32).view(np.float32)
    grid = np.arange(-10, 10, 2.0**-12).astype(np.float32)
    return np.concatenate([pos, -pos, grid, np.float32([0.0, -0.0, 10.0, -10.0])])


@njit(error_model="numpy")
def tanh_f32_loop(u, out):                             # the kernel's scalar tanh over an array
    for i in range(u.shape[0]):
        out[i] = F.tanh_f32(u[i])


def gelu_f32_within_bounds(x, dout):
    """Kernel vs float32 twin: forward and backward within the measured bounds."""
    y_k, y_t = K.gelu_forward(x)[0], T.gelu_forward(x)[0]
    dx_k, dx_t = K.gelu_backward(dout, x), T.gelu_backward(dout, x)
    assert y_k.dtype == dx_k.dtype == np.float32
    scale = np.maximum(np.abs(dout), 1)                # the bound is for dout = 1
    assert np.max(np.abs(y_k.astype(np.float64) - y_t)) <= GELU_F32_ABS["forward"]
    assert np.max(np.abs(dx_k.astype(np.float64) - dx_t) / scale) <= GELU_F32_ABS["backward"]
    far = np.abs(x) > 5.5                              # tanh(u) = ±1 in both: the twin's bits
    assert same_bits(y_k[far], y_t[far]) and same_bits(dx_k[far], dx_t[far])


@DTYPES
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # the twin's x³, documented
def test_gelu_keeps_x_alone(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 7, 32)) * 3).astype(dtype)
    x[0, 0, :4] = [0.0, 150.0, -150.0, np.finfo(dtype).max]   # beyond |x| = 100 and at the top
    (y_k, c_k), (y_t, c_t) = K.gelu_forward(x), T.gelu_forward(x)
    assert c_k is x and c_t is x                               # the same cache: x alone
    dout = rng.standard_normal(x.shape).astype(dtype)
    if dtype == np.float64:                                    # NumPy's lines: the twin's bits
        assert np.array_equal(y_k, y_t)
        assert np.array_equal(K.gelu_backward(dout, c_k), T.gelu_backward(dout, c_t))
    else:                                                      # the rational tanh: the bounds
        gelu_f32_within_bounds(x, dout)
        assert same_bits(y_k[0, 0, :4], y_t[0, 0, :4])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_gelu_float32_dense_sweep():
    x = float32_sweep()
    gelu_f32_within_bounds(x, np.ones_like(x))
    gelu_f32_within_bounds(x, np.random.default_rng(5).standard_normal(x.shape).astype(np.float32))


def test_tanh_float32_error():
    u = np.concatenate([float32_sweep(), float32_sweep(step=65536) * 3])   # and out to ±30
    t = np.empty_like(u)
    tanh_f32_loop(u, t)
    ref = np.tanh(u.astype(np.float64))
    ulp = np.abs(t - ref) / np.spacing(np.abs(ref).astype(np.float32))
    assert ulp.max() <= TANH_F32_ULP and np.abs(t - ref).max() <= TANH_F32_ABS
    assert np.abs(t).max() == 1 and np.all(t[u > 7.9054] == 1) and np.all(t[u < -7.9054] == -1)
    pos = u[u > 0]
    tp, tn = np.empty_like(pos), np.empty_like(pos)
    tanh_f32_loop(pos, tp)
    tanh_f32_loop(-pos, tn)
    assert np.array_equal(tn, -tp)                             # odd, exactly
    tiny = np.float32([3.9e-4, 1e-20, 1e-38, 1e-40, 1e-45, 0.0])   # |u| < 0.0004: tanh(u) = u
    tiny = np.concatenate([tiny, -tiny])
    tanh_f32_loop(tiny, t[:tiny.size])
    assert same_bits(t[:tiny.size], tiny)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value:RuntimeWarning")      # the twin's, at ±inf
def test_gelu_float32_extreme_inputs_are_the_twins():
    big = [5.5, 6.0, 99.0, 100.0, 1e4, 3e38, np.finfo(np.float32).max, np.inf]
    tiny = [0.0, 1e-38, 1e-40, 1e-45]                          # the last three subnormal
    x = np.float32(big + [-v for v in big] + tiny + [-v for v in tiny] + [np.nan])
    y = K.gelu_forward(x)[0]
    assert same_bits(y, T.gelu_forward(x)[0])                  # x or -0; inf; nan at -inf, nan
    assert y[2] == 99 and y[10] == 0 and np.signbit(y[10]) and np.isnan(y[15])   # -inf: 0.5 x · 0
    for dout in (np.ones_like(x), np.random.default_rng(6).standard_normal(x.shape).astype(np.float32)):
        assert same_bits(K.gelu_backward(dout, x), T.gelu_backward(dout, x))   # 1 or 0; nan at ±inf


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_gelu_float32_layouts():
    """A strided x: NumPy's lines, the twin's bits; a strided dout: copied, then the kernel."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((6, 40)) * 3).astype(np.float32)
    xs, dout = x[:, ::2], rng.standard_normal((6, 40)).astype(np.float32)
    assert np.array_equal(K.gelu_forward(xs)[0], T.gelu_forward(xs)[0])
    assert np.array_equal(K.gelu_backward(dout[:, ::2], xs), T.gelu_backward(dout[:, ::2], xs))
    x2 = np.ascontiguousarray(xs)
    assert np.array_equal(K.gelu_backward(dout[:, ::2], x2), K.gelu_backward(dout[:, ::2].copy(), x2))


# float32 exp (kernels/fastmath.py), the exp of the float32 softmaxes of attention and the
# cross-entropy: over every float32 in [EXP_F32_LO, EXP_F32_HI] = [-87.34, 88.72] (2.2e9
# inputs) against float64 np.exp, at most 0.99 ulp and 8.2e-8 relative (np.exp in float32:
# 2.5 ulp); held to those bounds with about 10% margin, on every 509th float32 of the range.
EXP_F32_ULP, EXP_F32_REL = 1.1, 9e-8


@njit(error_model="numpy")
def exp_f32_loop(u, out):                              # the kernels' scalar exp over an array
    for i in range(u.shape[0]):
        out[i] = F.exp_f32(u[i])


def exp_f32(u):
    u = np.asarray(u, dtype=np.float32)
    out = np.empty_like(u)
    exp_f32_loop(u, out)
    return out


def test_exp_float32_error():
    step = 509
    pos = np.arange(0, int(F.EXP_F32_HI.view(np.int32)) + 1, step, dtype=np.int32).view(np.float32)
    neg = -np.arange(0, int((-F.EXP_F32_LO).view(np.int32)) + 1, step, dtype=np.int32).view(np.float32)
    u = np.concatenate([pos, neg, np.float32([F.EXP_F32_LO, F.EXP_F32_HI])])
    e, ref = exp_f32(u), np.exp(u.astype(np.float64))
    err = np.abs(e - ref)
    assert (err / np.spacing(ref.astype(np.float32))).max() <= EXP_F32_ULP
    assert (err / ref).max() <= EXP_F32_REL


def test_exp_float32_exact_values():
    lo, hi, inf = F.EXP_F32_LO, F.EXP_F32_HI, np.float32(np.inf)
    assert np.array_equal(exp_f32([0.0, -0.0, 1e-30, -1e-30, 2.9e-8, -2.9e-8]), np.ones(6))  # exp(0) = 1
    assert not exp_f32([-np.inf, np.nextafter(lo, -inf), -88.0, -104.0, -1e30]).any()   # flushed to 0
    assert exp_f32([lo])[0] >= np.finfo(np.float32).tiny                                 # normal down to lo
    top = exp_f32([hi, np.nextafter(hi, inf), 100.0, 1e30, np.inf])
    assert np.isfinite(top[0]) and np.all(np.isinf(top[1:]))                             # inf beyond hi
    with np.errstate(over="ignore"):                                                     # where exp overflows
        assert np.float32(np.exp(np.float64(np.nextafter(hi, inf)))) == inf
    assert np.isnan(exp_f32([np.nan, -np.nan])).all()


def test_max_float32_on_keys():
    """max_f32 and masked_max_f32: np.max's value, -0 below +0, -inf where nothing is allowed."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(203).astype(np.float32)
    x[:6] = [np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45]
    ok = rng.random(203) < 0.5
    ok[-1] = False
    assert F.max_f32(x) == np.inf and F.max_f32(x[1:]) == x[1:].max()
    m, last = F.masked_max_f32(x, ok)
    assert m == x[ok].max() and last == np.flatnonzero(ok)[-1] + 1
    neg = -np.abs(x[1:])
    assert F.max_f32(neg) == -0.0 and not np.signbit(F.max_f32(np.float32([-0.0, 0.0, -1.0])))
    assert F.masked_max_f32(x, np.zeros(203, bool)) == (-np.inf, 0)


def cross_entropy_python(x, targets):
    """The float64 kernel's loop (kernels/loss.py, _cross_entropy_rows) in Python floats:
    the max, then exp (math.exp, the C library's, as in Numba) and z summed in order."""
    count = int(np.count_nonzero(targets != -100))
    d, total = np.zeros_like(x), 0.0
    for n, t in enumerate(targets):
        if t == -100:
            continue
        row = [float(v) for v in x[n]]
        m = row[0]
        for v in row[1:]:
            if v > m:
                m = v
        e = [math.exp(v - m) for v in row]
        z = 0.0
        for v in e:
            z += v
        total += m + math.log(z) - row[t]
        scale = 1.0 / (z * count)
        d[n] = [v * scale for v in e]
        d[n, t] -= 1.0 / count
    return total / count, d


def test_cross_entropy_float64_is_the_arithmetic_before_issue_17():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((7, 90)) * 5
    targets = rng.integers(0, 90, size=7)
    targets[2] = -100
    logits[4, ::3] = -np.inf
    loss, dl = K.cross_entropy(logits.copy(), targets)
    loss_p, dl_p = cross_entropy_python(logits, targets)
    assert loss == loss_p and np.array_equal(dl, dl_p)


def test_cross_entropy_float32_wide_rows():
    """Rows of 3000 (the kernel's vectorised passes, a tail after the last full register):
    the twin within TOL; a row whose only finite logit is its target costs exactly 0."""
    rng = np.random.default_rng(10)
    logits = (rng.standard_normal((4, 3001)) * rng.choice([1.0, 8.0], size=(4, 1))).astype(np.float32)
    targets = rng.integers(0, 3001, size=4)
    logits[0] = -np.inf
    logits[0, targets[0]] = 7.0
    loss_t, dl_t = T.cross_entropy(logits, targets)
    loss_k, dl_k = K.cross_entropy(logits.copy(), targets)
    assert abs(loss_k - loss_t) <= TOL[np.float32] * abs(loss_t)
    close("dlogits", dl_k, dl_t, np.float32)
    assert not dl_k[0].any() and not dl_t[0].any()     # p = onehot: exp(0) = 1, exp(-inf) = 0
