"""The lm_head and the loss on the counted positions only (``lm_head_loss``: the twin in
ops/loss.py, the blocked kernel in kernels/loss.py) give the loss and every gradient of
the full computation — logits for every position, the cross-entropy, the lm_head's
backward — in float64 and float32; so does every model's ``loss_and_grads``, which runs
it; and a training step no longer holds the (B, T, V) logits whole."""
from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

from minipeft import GPT2, GPT2Config, peft
from minipeft import ops as T
from minipeft.kernels import loss as K
from minipeft.testing import cmp
from minipeft.train.pretrain import init_params

TOL = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])


def full(xf, wte, targets):
    """The reference: logits for every position, then the loss and the lm_head's backward."""
    C = xf.shape[-1]
    logits = xf.reshape(-1, C) @ wte.T                                   # (N, V)
    loss, dlogits = T.cross_entropy(logits, targets.reshape(-1))
    return loss, (dlogits @ wte).reshape(xf.shape), dlogits.T @ xf.reshape(-1, C)


def targets_for(kind, shape, V, rng):
    t = rng.integers(0, V, size=shape)
    if kind == "last":                                                   # shift_labels' last position
        t[:, -1] = -100
    elif kind == "half":                                                 # a prompt, completion-only labels
        t[:, : shape[1] // 2] = -100
    elif kind == "random":
        t[rng.random(shape) < 0.6] = -100
    elif kind == "one":                                                  # one counted position
        t[:] = -100
        t[1, 3] = 7
    return t


def close(name, ours, ref, dtype):
    assert ours.dtype == ref.dtype == dtype, name
    assert cmp(name, ours, ref, TOL[dtype]) <= TOL[dtype]


@DTYPES
@pytest.mark.parametrize("kind", ["last", "half", "random", "one"])
@pytest.mark.parametrize("impl", ["twin", "kernel", "kernel, 3-row blocks"])
def test_equals_the_full_computation(dtype, kind, impl, monkeypatch):
    rng = np.random.default_rng(0)
    xf = rng.standard_normal((3, 11, 24)).astype(dtype)
    wte = (rng.standard_normal((97, 24)) * 0.5).astype(dtype)
    targets = targets_for(kind, (3, 11), 97, rng)
    if impl == "kernel, 3-row blocks":                                  # many blocks, a short last one
        monkeypatch.setattr(K, "LOGITS_BLOCK", 3 * 97 * xf.itemsize)
    fn = T.lm_head_loss if impl == "twin" else K.lm_head_loss
    loss, dxf, dwte = fn(xf, wte, targets, need_dwte=True)
    loss_r, dxf_r, dwte_r = full(xf, wte, targets)
    assert abs(loss - loss_r) <= TOL[dtype] * abs(loss_r)
    close("dxf", dxf, dxf_r, dtype)
    close("dwte", dwte, dwte_r, dtype)
    assert not dxf[targets == -100].any()                                # ignored positions: exactly 0
    loss_only = fn(xf, wte, targets, grads=False)
    assert loss_only[1] is None and loss_only[2] is None
    assert abs(loss_only[0] - loss_r) <= TOL[dtype] * abs(loss_r)
    assert fn(xf, wte, targets)[2] is None                               # wte frozen: no dwte


def test_blocks_share_the_rows_evenly():
    assert K.block_rows(508, 50257, 4) == 508                            # GPT-2's bench: one block
    assert K.block_rows(1016, 50257, 4) == 508                           # batch 8: 2 × 508, not 667 + 349
    assert K.block_rows(1016, 50257, 4) * 50257 * 4 <= K.LOGITS_BLOCK
    assert K.block_rows(508, 50257, 4, budget=64 * 2**20) == 254
    assert K.block_rows(10, 97, 8, budget=3 * 97 * 8) == 3               # 4 blocks: 3, 3, 3, 1
    assert K.block_rows(1, 10**6, 8) == 1 and K.block_rows(5, 7, 4) == 5


def model_and_batch(method, dtype):
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=61)
    base = GPT2(cfg, init_params(cfg, seed=3)).astype(dtype)
    configs = {"lora": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                       bias="lora_only"),
               "prompt": peft.PromptTuningConfig(num_virtual_tokens=3),
               "prefix": peft.PrefixTuningConfig(num_virtual_tokens=3)}
    if method == "full":                                                 # wte trains: dwte from the head
        model = base
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.get_peft_model(base, configs[method], seed=1)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 61, size=(2, 12))
    labels = ids.copy()
    labels[:, :5] = -100                                                 # the prompt: completion-only
    labels[1, 10:] = -100                                                # and some padding
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    return model, ids, labels, mask


@DTYPES
@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "twins"])
@pytest.mark.parametrize("method", ["full", "lora", "prompt", "prefix"])
def test_loss_and_grads_equal_backward_from_full_logits(method, kernels, dtype):
    model, ids, labels, mask = model_and_batch(method, dtype)
    model.use_kernels = kernels
    loss, grads = model.loss_and_grads(ids, labels, mask)
    logits, cache = model.forward(ids, mask)                             # every position's logits
    loss_r, dlogits = T.cross_entropy(logits, T.shift_labels(labels))
    grads_r = model.backward(dlogits, cache)
    assert abs(loss - loss_r) <= TOL[dtype] * abs(loss_r)
    assert abs(model.loss(ids, labels, mask) - loss_r) <= TOL[dtype] * abs(loss_r)
    assert sorted(grads) == sorted(grads_r) and grads
    for name in grads_r:
        close(name, grads[name], grads_r[name], dtype)


def test_a_training_step_never_holds_the_logits_whole(monkeypatch):
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=64, vocab_size=8000)
    model = GPT2(cfg, init_params(cfg, seed=0)).astype(np.float64)
    model.trainable = {"transformer.h.0.ln_1.weight"}                  # wte frozen: no (V, C) gradient
    ids = np.random.default_rng(0).integers(0, 8000, size=(2, 64))
    logits_bytes = ids.size * 8000 * 8                                   # 8.2 MB for the whole batch
    monkeypatch.setattr(K, "LOGITS_BLOCK", logits_bytes // 8)            # 8 blocks of 16 rows
    model.loss_and_grads(ids, ids)                                       # compiled, warm
    tracemalloc.start()
    try:
        model.loss_and_grads(ids, ids)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < logits_bytes / 2, (peak, logits_bytes)
