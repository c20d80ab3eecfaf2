"""minipeft's GPT-2 against transformers' GPT2LMHeadModel, tensor by tensor.

Tolerances (max|a - b| / max|b| per tensor):
- float64 1e-10: both sides compute the same expressions in float64; only summation
  order differs (seen ~1e-15).
- float32 1e-4: float32 sums over up to C (or B*T for weight gradients) terms in a
  different order than torch (seen ~1e-6).
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import torch_reference

from minipeft import GPT2
from minipeft.testing import assert_close, cmp

TOL = {"float64": 1e-10, "float32": 1e-4}

# (name, config, batch, T, mask): odd head counts, n_layer 1-4, batch > 1,
# padding on either side, T = n_positions, a custom MLP width.
CASES = [
    ("1layer-1head-T=npos", dict(n_layer=1, n_head=1, n_embd=8, n_positions=8, vocab_size=11), 1, 8, None),
    ("2layer-3head-rightpad", dict(n_layer=2, n_head=3, n_embd=24, n_positions=16, vocab_size=50),
     3, 16, "right"),
    ("3layer-5head-leftpad", dict(n_layer=3, n_head=5, n_embd=40, n_positions=32, vocab_size=97),
     2, 20, "left"),
    ("4layer-7head-T=npos-ninner",
     dict(n_layer=4, n_head=7, n_embd=56, n_positions=24, vocab_size=64, n_inner=100), 2, 24, None),
]


def make_batch(rng, B, T, V, pad):
    ids = rng.integers(0, V, size=(B, T))
    mask = None
    labels = ids.copy()
    if pad is not None:
        mask = np.ones((B, T), dtype=np.int64)
        for b in range(1, B):               # row 0 unpadded, the others padded by 2, 4, ...
            n = min(2 * b, T - 2)
            if pad == "right":
                mask[b, T - n:] = 0
            else:
                mask[b, :n] = 0
        labels[mask == 0] = -100
    labels[0, T // 2] = -100                # an ignored token inside a sequence too
    return ids, labels, mask


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,config,B,T,pad", CASES, ids=[c[0] for c in CASES])
def test_every_tensor_equals_transformers(hf_checkpoint, name, config, B, T, pad, dtype):
    folder, hf_model = hf_checkpoint(seed=len(name), **config)
    model = GPT2.from_pretrained(folder).astype(dtype)
    rng = np.random.default_rng(1)
    ids, labels, mask = make_batch(rng, B, T, config["vocab_size"], pad)
    ref = torch_reference(hf_model, ids, labels, mask, dtype=dtype)
    tol = TOL[dtype]

    logits, cache = model.forward(ids, mask)
    ours = {"embeddings": cache["hidden_states"][0], "ln_f": cache["xf"], "logits": logits}
    ours.update({f"block.{i}": h for i, h in enumerate(cache["hidden_states"][1:])})
    assert_close(ours, {k: ref[k] for k in ours}, tol)
    assert logits.dtype == np.dtype(dtype)

    loss, grads = model.loss_and_grads(ids, labels, mask)
    assert abs(loss - ref["loss"]) / abs(ref["loss"]) <= tol
    assert set(grads) == set(ref["grads"])          # every parameter, lm_head tied into wte
    assert_close(grads, ref["grads"], tol)
    assert all(g.dtype == np.dtype(dtype) for g in grads.values())


def test_call_and_lists(hf_checkpoint):
    folder, hf_model = hf_checkpoint(seed=3, n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=20)
    model = GPT2.from_pretrained(folder)
    ids = [[1, 2, 3], [4, 5, 6]]
    ref = torch_reference(hf_model, ids, ids, dtype="float32")
    out = model(ids)
    assert out.shape == (2, 3, 20) and out.dtype == np.float32
    assert cmp("logits", out, ref["logits"]) <= TOL["float32"]
    assert model.loss(ids, ids) == pytest.approx(ref["loss"], rel=TOL["float32"])


def test_frozen_parameters_get_no_gradient(hf_checkpoint):
    """Only `trainable` names are differentiated; the others are skipped, not zeroed."""
    folder, hf_model = hf_checkpoint(seed=4, n_layer=2, n_head=2, n_embd=8, n_positions=8, vocab_size=20)
    model = GPT2.from_pretrained(folder).astype(np.float64)
    ids = np.arange(12).reshape(2, 6) % 20
    ref = torch_reference(hf_model, ids, ids)
    some = {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.ln_2.bias", "transformer.wpe.weight"}
    model.trainable = set(some)
    _, grads = model.loss_and_grads(ids, ids)
    assert set(grads) == some
    assert_close(grads, {k: ref["grads"][k] for k in some}, TOL["float64"])


def test_full_gpt2_124m_shape_float32(tmp_path):
    """The real GPT-2 124M shape (12 x 768, 50257 tokens), float32, forward and backward.

    Uses transformers' default GPT2Config and save_pretrained, then minipeft's converter."""
    from conftest import build_hf_model

    from minipeft import convert_checkpoint
    hf_model = build_hf_model(seed=0)
    hf_model.save_pretrained(tmp_path / "hf")
    convert_checkpoint(tmp_path / "hf", tmp_path / "converted")
    model = GPT2.from_pretrained(tmp_path / "converted")
    assert model.num_parameters() == 124_439_808
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50257, size=(2, 64))
    ref = torch_reference(hf_model, ids, ids, dtype="float32")
    logits, cache = model.forward(ids)
    assert logits.shape == (2, 64, 50257)
    ours = {"logits": logits, "ln_f": cache["xf"]}
    ours.update({f"block.{i}": h for i, h in enumerate(cache["hidden_states"][1:])})
    assert_close(ours, {k: ref[k] for k in ours}, TOL["float32"])
    loss, grads = model.loss_and_grads(ids, ids)
    assert abs(loss - ref["loss"]) / ref["loss"] <= TOL["float32"]
    assert_close(grads, ref["grads"], TOL["float32"])
