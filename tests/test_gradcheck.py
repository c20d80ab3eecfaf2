"""Float64 central finite differences against every hand-written backward.

A seeded random upstream gradient is used throughout (an all-ones upstream, as in
``.sum()``, hides softmax and layernorm bugs). Measure: max|analytic - numeric| /
max|numeric| per tensor. Tolerance 1e-6: central differences with h = 1e-6 in
float64 carry ~1e-10 round-off and ~h² truncation, so a correct backward lands
near 1e-9, while a wrong term shows up at 1e-2 or more.
"""
from __future__ import annotations

import numpy as np
import pytest

from minipeft import GPT2, GPT2Config
from minipeft.io.checkpoint import expected_shapes
from minipeft.ops import (
    attention_backward,
    attention_forward,
    attention_mask_allowed,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    merge_heads,
    merge_heads_backward,
    residual_backward,
    residual_forward,
    split_heads,
    split_heads_backward,
)
from minipeft.testing import grad_check, max_rel, numerical_gradient

TOL = 1e-6
rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape)


def check(errors):
    print(errors)
    assert errors and all(e <= TOL for e in errors.values()), errors


def test_layernorm():
    inputs = {"x": randn(2, 3, 5) * 3 + 1, "g": randn(5), "b": randn(5)}
    fwd = lambda x, g, b: layernorm_forward(x, g, b, 1e-5)[0]

    def bwd(dout):
        _, cache = layernorm_forward(inputs["x"], inputs["g"], inputs["b"], 1e-5)
        dx, dg, db = layernorm_backward(dout, cache)
        return {"x": dx, "g": dg, "b": db}
    check(grad_check(fwd, inputs, bwd, seed=1))


def test_linear():
    inputs = {"x": randn(2, 3, 4), "w": randn(4, 6), "b": randn(6)}
    fwd = lambda x, w, b: linear_forward(x, w, b)[0]

    def bwd(dout):
        _, cache = linear_forward(inputs["x"], inputs["w"], inputs["b"])
        dx, dw, db = linear_backward(dout, cache, inputs["w"])
        return {"x": dx, "w": dw, "b": db}
    check(grad_check(fwd, inputs, bwd, seed=2))


def test_linear_frozen_skips_weight_grads():
    x, w, b = randn(3, 4), randn(4, 2), randn(2)
    _, cache = linear_forward(x, w, b)
    dx, dw, db = linear_backward(randn(3, 2), cache, w, need_params=False)
    assert dw is None and db is None and dx.shape == x.shape


def test_gelu():
    inputs = {"x": randn(4, 7) * 2}
    check(grad_check(lambda x: gelu_forward(x)[0], inputs,
                     lambda dout: {"x": gelu_backward(dout, gelu_forward(inputs["x"])[1])}, seed=3))


def test_residual():
    inputs = {"x": randn(2, 3), "fx": randn(2, 3)}

    def bwd(dout):
        dx, dfx = residual_backward(dout)
        return {"x": dx, "fx": dfx}
    check(grad_check(lambda x, fx: residual_forward(x, fx)[0], inputs, bwd, seed=4))


def test_embedding():
    ids = np.array([[1, 3, 3, 0], [2, 1, 4, 3]])           # repeated tokens accumulate
    pos = np.arange(4)[None]
    inputs = {"wte": randn(5, 6), "wpe": randn(4, 6)}
    fwd = lambda wte, wpe: embedding_forward(ids, wte, wpe, pos)[0]

    def bwd(dout):
        _, cache = embedding_forward(ids, inputs["wte"], inputs["wpe"], pos)
        dwte, dwpe = embedding_backward(dout, cache)
        return {"wte": dwte, "wpe": dwpe}
    check(grad_check(fwd, inputs, bwd, seed=5))


@pytest.mark.parametrize("Tq,Tk,padded", [(5, 5, False), (5, 5, True), (3, 7, False), (1, 6, True)])
def test_attention(Tq, Tk, padded):
    """Causal attention, with padding keys and with keys longer than queries (KV cache)."""
    B, NH, hs = 2, 3, 4
    key_mask = None
    if padded:
        key_mask = np.ones((B, Tk), dtype=bool)
        key_mask[1, :2] = False                             # left padding, incl. a fully masked row
    allowed = attention_mask_allowed(Tq, Tk, key_mask)
    inputs = {"q": randn(B, NH, Tq, hs), "k": randn(B, NH, Tk, hs), "v": randn(B, NH, Tk, hs)}
    fwd = lambda q, k, v: attention_forward(q, k, v, allowed)[0]

    def bwd(dout):
        _, cache = attention_forward(inputs["q"], inputs["k"], inputs["v"], allowed)
        dq, dk, dv = attention_backward(dout, cache)
        return {"q": dq, "k": dk, "v": dv}
    check(grad_check(fwd, inputs, bwd, seed=6))


def test_attention_fully_masked_row_is_zero():
    allowed = attention_mask_allowed(3, 3, np.array([[0, 1, 1]]))
    q = k = v = randn(1, 1, 3, 2)
    y, _ = attention_forward(q, k, v, allowed)
    assert np.all(y[0, 0, 0] == 0) and np.all(np.isfinite(y))


def test_split_and_merge_heads():
    qkv = {"qkv": randn(2, 3, 3 * 6)}

    def fwd(qkv):
        q, k, v = split_heads(qkv, 2)
        return np.stack([q, k, v])

    def bwd(dout):
        return {"qkv": split_heads_backward(dout[0], dout[1], dout[2])}
    check(grad_check(fwd, qkv, bwd, seed=7))
    y = {"y": randn(2, 2, 3, 3)}
    check(grad_check(lambda y: merge_heads(y), y, lambda dout: {"y": merge_heads_backward(dout, 2)}, seed=8))


def test_cross_entropy():
    logits = randn(2, 4, 7) * 3
    targets = np.array([[1, 6, -100, 0], [3, -100, 2, 2]])
    loss, cache = cross_entropy_forward(logits, targets)
    dloss = 0.7                                              # a random-ish upstream scalar
    analytic = cross_entropy_backward(dloss, cache)
    numeric = numerical_gradient(lambda: dloss * cross_entropy_forward(logits, targets)[0], logits)
    assert max_rel(analytic, numeric)[1] <= TOL
    assert np.all(analytic[targets == -100] == 0)
    # against the definition, written out once
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = targets != -100
    assert loss == pytest.approx(-np.mean(lp[keep, targets[keep]]), rel=1e-14)


def tiny_model(seed=0, **overrides):
    cfg = GPT2Config(**{**dict(n_layer=2, n_head=2, n_embd=6, n_positions=5, vocab_size=7), **overrides})
    r = np.random.default_rng(seed)
    params = {k: r.standard_normal(s) * 0.5 for k, s in expected_shapes(cfg).items()}
    return GPT2(cfg, params)


@pytest.mark.parametrize("masked", [False, True])
def test_whole_model_backward(masked):
    """model.backward against finite differences of sum(logits * dlogits), every parameter."""
    model = tiny_model()
    ids = np.array([[1, 2, 3, 2, 6], [0, 5, 5, 1, 4]])
    mask = np.array([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]) if masked else None
    logits, cache = model.forward(ids, mask)
    dlogits = np.random.default_rng(9).standard_normal(logits.shape)
    grads = model.backward(dlogits, cache)
    assert set(grads) == set(model.params)
    for name, p in model.params.items():
        num = numerical_gradient(lambda: float(np.sum(model(ids, mask) * dlogits)), p)
        err = max_rel(grads[name], num)[1]
        assert err <= TOL, f"{name}: max_rel {err:.2e}"


def test_whole_model_loss_gradient():
    """loss_and_grads (cross-entropy with the label shift and -100) against finite differences."""
    model = tiny_model(seed=1, n_layer=1)
    ids = np.array([[1, 2, 3, 2, 6], [0, 5, 5, 1, 4]])
    labels = ids.copy()
    labels[1, 2] = -100
    _, grads = model.loss_and_grads(ids, labels)
    for name, p in model.params.items():
        num = numerical_gradient(lambda: model.loss(ids, labels), p)
        assert max_rel(grads[name], num)[1] <= TOL, name
