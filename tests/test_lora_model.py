"""LoRA's invariants, finite differences and dropout on minipeft's own model (no torch).

Finite differences (float64, central, h = 1e-6, random upstream) hold every LoRA
gradient to 1e-6 (max|Δ| / max|numeric|; round-off of the differences is ~1e-10).
DoRA's A and B are checked at the op level only: DoRA's backward treats the norm as
a constant (the paper's §4.3, as peft), which finite differences of the whole model
cannot do; its magnitude is checked on the whole model, since the norm does not
depend on it.
"""
from __future__ import annotations

import numpy as np
import pytest

from minipeft import GPT2, GPT2Config, LoraConfig, get_peft_model
from minipeft.peft import lora as twin
from minipeft.testing import grad_check, max_rel

FD_TOL = 1e-6
CFG = GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=12, vocab_size=17)


def tiny_model(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    from minipeft.io.checkpoint import expected_shapes
    params = {k: (0.3 * rng.standard_normal(s) + (1.0 if ".ln_" in k and k.endswith("weight") else 0))
              .astype(dtype) for k, s in expected_shapes(CFG).items()}
    return GPT2(CFG, params)


def peft(config, seed=0, randomize=True, **kw):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(tiny_model(seed), LoraConfig(**config), **kw)
    if randomize:
        rng = np.random.default_rng(seed + 1)
        for name, a in pm.trainable_parameters().items():
            if "lora_" in name:
                a[...] = 0.5 * rng.standard_normal(a.shape) + (1.0 if "magnitude" in name else 0.0)
    return pm


IDS = np.array([[1, 5, 3, 9, 2, 16, 0], [4, 4, 7, 1, 12, 3, 8]])


# ------------------------------------------------------------------ op level
@pytest.mark.parametrize("with_mask", [False, True])
def test_lora_op_finite_differences(with_mask):
    rng = np.random.default_rng(0)
    x, A, B = rng.standard_normal((6, 5)), rng.standard_normal((3, 5)), rng.standard_normal((4, 3))
    mask = twin.dropout_mask(rng, x.shape, 0.4, np.dtype(np.float64)) if with_mask else None
    inputs = dict(x=x, A=A, B=B)

    def backward(dout):
        _, cache = twin.lora_forward(x, A, B, 1.7, mask)
        dx, dA, dB = twin.lora_backward(dout, cache, A, B, 1.7, mask)
        return dict(x=dx, A=dA, B=dB)
    errors = grad_check(lambda x, A, B: twin.lora_forward(x, A, B, 1.7, mask)[0], inputs, backward)
    assert max(errors.values()) < FD_TOL, errors


def test_dora_op_finite_differences():
    """The norm is an input here, a constant, as in DoRA's backward."""
    rng = np.random.default_rng(1)
    base, delta = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    m, norm = rng.random(4) + 0.5, rng.random(4) + 0.5
    inputs = dict(base=base, delta=delta, magnitude=m)

    def backward(dout):
        dbase, ddelta, dm = twin.dora_backward(dout, twin.dora_forward(base, delta, m, norm)[1])
        return dict(base=dbase, delta=ddelta, magnitude=dm)
    errors = grad_check(lambda base, delta, magnitude: twin.dora_forward(base, delta, magnitude, norm)[0],
                        inputs, backward)
    assert max(errors.values()) < FD_TOL, errors


# ------------------------------------------------------------------ whole model
FD_CONFIGS = {
    "lora-all-linear-bias-all": dict(r=2, lora_alpha=3, target_modules="all-linear", bias="all"),
    "rslora-lora_only": dict(r=3, lora_alpha=2, target_modules=["c_attn", "mlp.c_proj"],
                             use_rslora=True, bias="lora_only"),
    "qv-slices": dict(r=2, lora_alpha=4, target_modules=["c_attn"], enable_lora=[True, False, True]),
    "dropout": dict(r=2, lora_alpha=4, target_modules=["c_attn", "mlp.c_fc"], lora_dropout=0.3),
}


@pytest.mark.parametrize("kernels", [False, True], ids=["numpy", "numba"])
@pytest.mark.parametrize("name", list(FD_CONFIGS))
def test_model_finite_differences(name, kernels):
    pm = peft(FD_CONFIGS[name])
    pm.use_kernels = kernels
    training = FD_CONFIGS[name].get("lora_dropout", 0) > 0

    def forward(**_):
        pm.train(training, seed=7)             # the same dropout masks on every call
        return pm.forward(IDS)[0]

    def backward(dout):
        pm.train(training, seed=7)
        return pm.backward(dout, pm.forward(IDS)[1])
    errors = grad_check(forward, pm.trainable_parameters(), backward)
    assert errors and max(errors.values()) < FD_TOL, errors


def test_dora_magnitude_finite_differences():
    pm = peft(dict(r=2, lora_alpha=4, target_modules=["c_attn", "mlp.c_proj"], use_dora=True))
    mags = {k: v for k, v in pm.trainable_parameters().items() if "magnitude" in k}
    errors = grad_check(lambda **_: pm(IDS), mags,
                        lambda dout: {k: v for k, v in pm.backward(dout, pm.forward(IDS)[1]).items()
                                      if k in mags})
    assert len(errors) == 4 and max(errors.values()) < FD_TOL, errors


# ------------------------------------------------------------------ invariants
def test_zero_B_leaves_the_base_model():
    pm = peft(dict(r=4, target_modules="all-linear"), randomize=False)   # default init: B = 0
    base = pm.base_model(IDS)
    assert all(not np.any(v) for k, v in pm.trainable_parameters().items() if "lora_B" in k)
    assert max_rel(pm(IDS), base)[1] == 0.0


@pytest.mark.parametrize("config", [dict(target_modules="all-linear"), dict(use_dora=True),
                                    dict(enable_lora=[False, True, True])])
def test_disable_merge_unmerge(config):
    pm = peft(dict(r=3, lora_alpha=5, **{"target_modules": ["c_attn"], **config}))
    base_params = {k: v.copy() for k, v in pm.params.items()}
    base = GPT2(CFG, base_params)(IDS)
    with pm.disable_adapter():
        assert max_rel(pm(IDS), base)[1] == 0.0
    adapted = pm(IDS)
    assert max_rel(adapted, base)[1] > 1e-3                   # the adapter does something
    pm.merge_adapter()
    assert max_rel(pm(IDS), adapted)[1] < 1e-12              # float64: merged = unmerged
    pm.unmerge_adapter()
    for k, v in base_params.items():                         # float64 round-off of W + Δ − Δ
        assert max_rel(pm.params[k], v)[1] < 1e-14, k
    before = pm(IDS)
    merged = pm.merge_and_unload()
    assert type(merged) is GPT2 and max_rel(merged(IDS), adapted)[1] < 1e-12
    assert np.array_equal(pm(IDS), before)                   # the PeftModel is untouched


def test_qkv_slices_touch_only_their_columns():
    pm = peft(dict(r=2, target_modules=["c_attn"], enable_lora=[True, False, True]))
    assert sorted(k.split("c_attn.")[1] for k in pm.trainable_parameters() if ".h.0." in k) == [
        "q.lora_A.weight", "q.lora_B.weight", "v.lora_A.weight", "v.lora_B.weight"]
    x = np.random.default_rng(0).standard_normal((3, CFG.n_embd))
    out, _ = pm._linear("transformer.h.0.attn.c_attn", x)
    with pm.disable_adapter():
        ref, _ = pm._linear("transformer.h.0.attn.c_attn", x)
    C = CFG.n_embd
    assert np.array_equal(out[:, C:2 * C], ref[:, C:2 * C])  # k untouched
    assert not np.allclose(out[:, :C], ref[:, :C]) and not np.allclose(out[:, 2 * C:], ref[:, 2 * C:])


# ------------------------------------------------------------------ dropout
def test_dropout_only_in_training_seeded_and_the_same_in_kernel_and_twin():
    pm = peft(dict(r=2, target_modules="all-linear", lora_dropout=0.5))
    ev = pm(IDS)
    assert np.array_equal(pm(IDS), ev)                        # eval: no dropout
    results = {}
    for kernels in (False, True):
        pm.use_kernels = kernels
        pm.train(seed=3)
        results[kernels] = pm.loss_and_grads(IDS, IDS)
    pm.train(seed=4)
    other = pm.loss_and_grads(IDS, IDS)[0]
    pm.eval()
    assert results[True][0] != pm.loss(IDS, IDS) and results[True][0] != other
    assert abs(results[True][0] - results[False][0]) < 1e-12 * abs(results[False][0])
    for k in results[False][1]:                              # float64, same math, other order
        assert max_rel(results[True][1][k], results[False][1][k])[1] < 1e-12, k


# ------------------------------------------------------------------ adapters
def test_several_adapters():
    pm = peft(dict(r=2, target_modules=["c_attn"]))
    first = pm(IDS)
    pm.add_adapter("other", LoraConfig(r=3, target_modules=["mlp.c_fc"], fan_in_fan_out=True,
                                       init_lora_weights="gaussian"))
    assert pm.active_adapter == "default" and np.array_equal(pm(IDS), first)
    pm.set_adapter("other")
    assert all("mlp.c_fc" in k for k in pm.trainable_parameters())
    pm.trainable_parameters()["base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight"][...] = 1.0
    assert not np.allclose(pm(IDS), first)
    pm.delete_adapter("other")
    assert pm.active_adapter == "default" and np.array_equal(pm(IDS), first)


def test_astype_converts_base_and_adapters():
    pm = peft(dict(r=2, target_modules="all-linear", use_dora=True))
    pm32 = pm.astype(np.float32)
    assert pm32.dtype == np.float32 and pm.dtype == np.float64
    assert all(a.dtype == np.float32 for a in pm32.trainable_parameters().values())
    assert pm32(IDS).dtype == np.float32
    assert max_rel(pm32(IDS), pm(IDS))[1] < 1e-5                # float32 round-off of the same model
    pm32.trainable_parameters()[next(iter(pm32.trainable_parameters()))][...] = 0
    assert np.any(next(iter(pm.trainable_parameters().values())))  # a copy, not a view
