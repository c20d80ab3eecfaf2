"""Elementary functions written out for Numba loops, so that LLVM vectorises the loop.

A Numba loop that calls ``math.exp`` (or ``np.exp``) calls the C library once per
element: LLVM has no vector exp to put in its place (no SVML here), so the loop stays
scalar. Written as the multiplies, adds, integer ops and selects it is made of, the
function inlines into the caller's loop and the loop vectorises (zmm registers, AVX-512
here). A loop over a
million float32: math.exp 6.5 ms, NumPy's SIMD np.exp 0.6 ms, exp_f32 0.35-0.45 ms.

    tanh_f32        tanh(u) for a float32 u, Eigen's rational function: the GELU kernel's
                    (kernels/ops.py), whose comment gives its error
    exp_f32         e^u for a float32 u, the Cephes/Eigen scheme (Eigen's pexp_float,
                    Cephes' expf polynomial): the exp of the float32 softmaxes of
                    attention (kernels/attention.py) and of the cross-entropy
                    (kernels/loss.py); their float64 kernels keep the C library's exp
    max_f32,        the max of a float32 row (of its allowed entries), taken on integer
    masked_max_f32  keys that order as the floats: LLVM vectorises an integer max, and
                    without fastmath it may not reorder a float one

exp_f32 against float64 np.exp over every float32 in [-87, 0] and in [0, 88] (1.1e9
inputs each, and the rest of [EXP_F32_LO, EXP_F32_HI]): max 0.98 and 0.99 ulp, 8.1e-8
and 8.2e-8 relative (NumPy's float32 np.exp: 2.5 ulp, 2.1e-7 on 16 million random
inputs); tests/test_ops_kernels.py holds it to 1.1 ulp and 9e-8.

What makes a loop that calls them vectorise: float32 constants (a float64 literal would
turn the arithmetic into float64), ``error_model="numpy"`` (``JIT_VEC``) on a function
or caller that divides (Numba's default checks every division for a zero divisor, and the
branch stops the vectoriser), and reductions written as integer max or kept out of the
loop (LLVM does not reorder a float sum or max without fastmath; Numba leaves the SLP
vectoriser off). fastmath
stays off: no fused multiply-adds, no reassociation, the same bits on every x86 machine.
"""
from __future__ import annotations

import numpy as np
from numba import njit

JIT_VEC = dict(cache=True, fastmath=False, error_model="numpy")   # a float32 loop that divides
_f32 = np.float32
_ZERO, _ONE, _INF = _f32(0.0), _f32(1.0), _f32(np.inf)
_LOG2E = _f32(1.44269504088896341)             # log2(e)
_ROUND = _f32(12582912.0)                      # 1.5 · 2^23: x + _ROUND - _ROUND rounds x
_LN2_HI, _LN2_LO = _f32(0.693359375), _f32(-2.12194440e-4)   # ln 2 = hi + lo, hi 9 bits
_P0, _P1, _P2, _P3, _P4, _P5 = (               # Cephes expf: exp(r) ~ 1 + r + r² p(r)
    _f32(1.9875691500e-4), _f32(1.3981999507e-3), _f32(8.3334519073e-3),
    _f32(4.1665795894e-2), _f32(1.6666665459e-1), _f32(5.0000001201e-1))
EXP_F32_LO = _f32(-87.33654)                   # ln of float32's smallest normal (1.18e-38)
EXP_F32_HI = _f32(88.72283)                    # the largest float32 whose exp is finite


@njit(cache=True, fastmath=False)
def _pow2_f32(k):
    """2^k as float32 for an int32 k in [-126, 127]: the exponent field alone."""
    return np.int32((k + 127) << 23).view(np.float32)


@njit(cache=True, fastmath=False)
def exp_f32(u):
    """e^u, u float32 -> float32, within 1 ulp of float64 np.exp:

        n = round(u log2 e)                 |u - n ln 2| <= ln 2 / 2
        r = u - n ln 2                      in two steps (Cody-Waite): n · hi is exact
        e^u = 2^n e^r,  e^r ~ 1 + r + r² (p5 + p4 r + ... + p0 r⁵)   (Cephes expf)

    Exactly 1 at u = 0 (r = 0), 0 below EXP_F32_LO = -87.3365 (results there would be
    subnormal, below 1.18e-38: flushed, harmless in a softmax, where the largest term is
    1), inf above EXP_F32_HI = 88.7228 (where exp overflows), so exp(-inf) = 0 and
    exp(inf) = inf; a nan passes through (both comparisons fail, and nan · anything is
    nan). The round is the add-and-subtract of 1.5 · 2^23 (no float -> int conversion,
    which is undefined at nan), the integer n read from the same sum's low bits; 2^n is
    its exponent field, written as an int32 and read back as a float32 (a scalar .view).
    Error: the module docstring."""
    t = u * _LOG2E + _ROUND                    # t = 1.5 · 2^23 + n: n in t's low bits
    fn = t - _ROUND                            # n, as a float32
    r = u - fn * _LN2_HI                       # exact: fn · hi has <= 17 bits
    r = r - fn * _LN2_LO
    r2 = r * r
    p = r * _P0 + _P1                          # Horner, as Cephes
    p = r * p + _P2
    p = r * p + _P3
    p = r * p + _P4
    p = r * p + _P5
    y = (p * r2 + r) + _ONE                    # e^r
    n = np.int32(np.float32(t).view(np.int32) - 0x4B400000)   # t's bits - 1.5 · 2^23's
    n1 = min(n, np.int32(127))                 # 2^n = 2^n1 · 2^(n - n1): n = 128 at u > 88.38
    e = y * _pow2_f32(n1) * _pow2_f32(n - n1)
    return _ZERO if u < EXP_F32_LO else (_INF if u > EXP_F32_HI else e)


_KEY_NEG_INF = np.int32(-2139095041)           # _key_f32's value at -inf's bits (0xFF800000)


@njit(cache=True, fastmath=False)
def _key_f32(b):
    """int32 bits b of a float32 -> an int32 key in the floats' order (-0 just below +0):
    non-negative floats keep their bits, negative ones flip all but the sign bit. Its own
    inverse."""
    return np.int32(b ^ ((b >> 31) & 0x7FFFFFFF))


@njit(cache=True, fastmath=False)
def max_f32(x):
    """max of x (n,) float32, n >= 1, on the floats' keys (see masked_max_f32)."""
    v = x.view(np.int32)
    key = _KEY_NEG_INF
    for j in range(x.shape[0]):
        key = max(key, _key_f32(v[j]))
    return np.int32(_key_f32(key)).view(np.float32)


@njit(cache=True, fastmath=False)
def masked_max_f32(x, ok):
    """x (n,) float32, ok (n,) bool -> (max of x[j] where ok[j], or -inf if none; 1 + the
    last j where ok[j], or 0). A float max reduction does not vectorise without fastmath
    (LLVM may not reorder it, nan and -0 being what they are), an integer one does: the max
    is taken on the floats' keys, exactly. A nan with its sign bit clear wins, one with it
    set loses to -inf: either way its row is nan after the exp."""
    v = x.view(np.int32)
    key, last = _KEY_NEG_INF, 0
    for j in range(x.shape[0]):                # (written so that both reductions vectorise)
        key = max(key, _key_f32(v[j]) if ok[j] else _KEY_NEG_INF)
        last = max(last, (j + 1) * ok[j])
    return np.int32(_key_f32(key)).view(np.float32), last


# Eigen's float32 tanh (generic_fast_tanh_float): a 13/6-degree rational function.
_TANH_CLAMP = _f32(7.90531110763549805)        # where p/q rounds to ±1: tanh's ±1 beyond
_TANH_TINY = _f32(0.0004)                      # below: tanh(u) = u (p/q underflows at 1e-37)
_ALPHA1, _ALPHA3, _ALPHA5, _ALPHA7, _ALPHA9, _ALPHA11, _ALPHA13 = (   # numerator, odd
    _f32(4.89352455891786e-03), _f32(6.37261928875436e-04), _f32(1.48572235717979e-05),
    _f32(5.12229709037114e-08), _f32(-8.60467152213735e-11), _f32(2.00018790482477e-13),
    _f32(-2.76076847742355e-16))
_BETA0, _BETA2, _BETA4, _BETA6 = (                                     # denominator, even
    _f32(4.89352518554385e-03), _f32(2.26843463243900e-03), _f32(1.18534705686654e-04),
    _f32(1.19825839466702e-06))


@njit(**JIT_VEC)
def tanh_f32(u):
    """tanh(u), u float32: Eigen's 13/6-degree rational function x p(x²) / q(x²) of x = u
    clamped to ±7.905, and u itself for |u| < 0.0004. A nan passes through (both
    comparisons fail). Within 6.1 ulp (3.6e-7) of float64 np.tanh over [-10, 10] (the
    GELU kernel's comment in kernels/ops.py gives the sweep and what it means for GELU)."""
    x = _TANH_CLAMP if u > _TANH_CLAMP else (-_TANH_CLAMP if u < -_TANH_CLAMP else u)
    x2 = x * x
    p = x2 * _ALPHA13 + _ALPHA11               # Horner, highest power first
    p = x2 * p + _ALPHA9
    p = x2 * p + _ALPHA7
    p = x2 * p + _ALPHA5
    p = x2 * p + _ALPHA3
    p = x2 * p + _ALPHA1
    p = x * p                                  # x (a1 + a3 x² + ... + a13 x¹²)
    q = x2 * _BETA6 + _BETA4
    q = x2 * q + _BETA2
    q = x2 * q + _BETA0                        # b0 + b2 x² + b4 x⁴ + b6 x⁶ >= b0
    return u if abs(u) < _TANH_TINY else p / q
