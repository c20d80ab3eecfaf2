"""Bottleneck adapters (minipeft.peft.bottleneck, bottleneck_model, kernels.bottleneck)
against AdapterHub's ``adapters`` 1.3.0 on transformers' GPT-2.

The same random base checkpoint on both sides; every adapter tensor of AdapterHub's
model (adapter_up included, which its inits may zero) set to random values and
copied into minipeft, so that no term can hide behind a zero or a one. Compared:
logits, loss, every adapter gradient, the trainable count; then the inits, the
zero-up invariant, finite differences, kernels against twins, files and errors.

Tolerances (max|a - b| / max|b| per tensor):
- float64 1e-10: the same expressions in float64, summed in another order (seen ~1e-15).
- float32 1e-4: float32 sums over C or B·T terms in another order than torch (seen ~1e-6).
- finite differences 1e-6: central differences with h = 1e-5 on a float64 model leave
  ~1e-10 truncation (h²) and ~1e-11 / max|grad| round-off (the smallest adapter gradients
  are ~6e-4, where h = 1e-6 measured 9e-7 of pure round-off and h = 1e-5 9e-8); a wrong
  term shows at 1e-2 or more.
- kernels: float64 1e-12 (the same arithmetic, another order), float32 1e-5 (float32
  sums over N rows, and the kernels' math functions round in float64).
"""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
from test_lora_vs_peft import SMALL, _config

from minipeft import (
    GPT2,
    BottleneckConfig,
    BottleneckModel,
    CheckpointError,
    ConfigError,
    LoraConfig,
    PeftModel,
    get_peft_model,
)
from minipeft.io.checkpoint import normalize_names
from minipeft.kernels import bottleneck as K
from minipeft.peft import bottleneck as T
from minipeft.peft.base import PREFIX
from minipeft.testing import assert_close, cmp, max_rel, numerical_gradient

TOL = {"float64": 1e-10, "float32": 1e-4}
FD_TOL = 1e-6
KERNEL_TOL = {np.float64: 1e-12, np.float32: 1e-5}
IDS = np.array([[3, 14, 15, 9, 2, 6, 5, 35, 8, 9, 7, 9], [8, 9, 7, 9, 3, 23, 8, 4, 1, 0, 42, 17]])
LABELS = np.where(np.arange(12) == 4, -100, IDS)           # one ignored label
AH_CLASS = {"pfeiffer": "SeqBnConfig", "houlsby": "DoubleSeqBnConfig", "parallel": "ParBnConfig"}

# (preset, overrides): the same keywords go to AdapterHub's preset class and to BottleneckConfig
VARIANTS = {
    "pfeiffer": ("pfeiffer", dict(reduction_factor=4)),
    "houlsby": ("houlsby", dict(reduction_factor=8)),                               # swish
    "parallel": ("parallel", dict(reduction_factor=4, scaling=2.5)),
    "tanh-attn-residual-after": ("pfeiffer", dict(reduction_factor=6, non_linearity="tanh", mh_adapter=True,
                                                  output_adapter=False, residual_before_ln=False)),
    # LN_after(s·u) would not depend on s: a trained s goes with the residual inside LN_after
    "gelu-ln-learned-leave-out": ("houlsby", dict(reduction_factor=4, non_linearity="gelu", ln_before=True,
                                                  ln_after=True, adapter_residual_before_ln=True,
                                                  scaling="learned", original_ln_before=True, leave_out=[0])),
    "gelu_new-channel-per-layer": ("pfeiffer", dict(reduction_factor={"1": 3, "default": 8},
                                                    non_linearity="gelu_new", scaling="channel",
                                                    original_ln_after=False)),
    "parallel-leaky-ln": ("parallel", dict(reduction_factor=8, non_linearity="leakyrelu", ln_before=True,
                                           ln_after=True, mh_adapter=True, original_ln_after=False)),
}


def ours_name(ah_name: str) -> str:
    """AdapterHub's parameter name -> minipeft's saved key (the documented scheme)."""
    return PREFIX + ah_name.replace(".adapters.default.", ".")


def make_pair(hf_model, preset, overrides, dtype="float64", seed=0):
    """-> (AdapterHub's GPT2LMHeadModel, minipeft BottleneckModel), equal random adapters."""
    import adapters
    import torch
    state = {k: v.numpy().astype(dtype) for k, v in hf_model.state_dict().items()}
    tm = copy.deepcopy(hf_model)
    adapters.init(tm)
    tm.add_adapter("default", config=getattr(adapters, AH_CLASS[preset])(**overrides))
    tm.train_adapter("default")                      # active, trainable; the base frozen
    tm = tm.to(getattr(torch, dtype)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if p.requires_grad:                      # norms and scaling about 1, the rest about 0
                one = 1.0 if name.endswith(("norm_before.weight", "norm_after.weight", "scaling")) else 0.0
                p.copy_(one + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    pm = get_peft_model(GPT2(_config(hf_model), normalize_names(state, "t")),
                        BottleneckConfig(preset=preset, **copy.deepcopy(overrides)))
    theirs = {ours_name(n): p.detach().numpy() for n, p in tm.named_parameters() if p.requires_grad}
    ours = pm.trainable_parameters()
    assert sorted(ours) == sorted(theirs)
    for k, v in theirs.items():
        ours[k][...] = v
    return tm, pm


def torch_loss_and_grads(tm, ids, labels):
    import torch
    tm.zero_grad()
    logits = tm(torch.as_tensor(ids)).logits
    lab = torch.as_tensor(labels)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {ours_name(n): p.grad.numpy().copy() for n, p in tm.named_parameters() if p.requires_grad}
    return logits.detach().numpy(), loss.item(), grads


# ------------------------------------------------------------------ against AdapterHub
def test_presets_are_adapterhubs(capsys):
    import adapters
    for preset, cls in AH_CLASS.items():
        theirs = getattr(adapters, cls)()
        ours = BottleneckConfig(preset=preset)
        for f in ("reduction_factor", "non_linearity", "mh_adapter", "output_adapter", "original_ln_before",
                  "original_ln_after", "residual_before_ln", "adapter_residual_before_ln", "ln_before",
                  "ln_after", "init_weights", "is_parallel", "scaling", "leave_out", "dropout"):
            assert getattr(ours, f) == getattr(theirs, f), (preset, f)
    for alias, preset in (("seq_bn", "pfeiffer"), ("double_seq_bn", "houlsby"), ("par_bn", "parallel")):
        a, b = BottleneckConfig(preset=alias).to_dict(), BottleneckConfig(preset=preset).to_dict()
        assert a.pop("preset") == alias and {**a, "preset": preset} == b


# float32 runs once, through the kernels; the kernel tests hold the twins to them
@pytest.mark.parametrize("dtype,kernels", [("float64", True), ("float64", False), ("float32", True)],
                         ids=["float64-numba", "float64-numpy", "float32-numba"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bottleneck_equals_adapterhub(hf_checkpoint, variant, dtype, kernels, capsys):
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    tm, pm = make_pair(hf_model, *VARIANTS[variant], dtype=dtype)
    pm.use_kernels = kernels
    trainable = sum(p.numel() for p in tm.parameters() if p.requires_grad)
    total = sum(p.numel() for p in tm.parameters())
    capsys.readouterr()
    pm.print_trainable_parameters()
    assert capsys.readouterr().out.strip() == (f"trainable params: {trainable:,d} || all params: {total:,d} "
                                               f"|| trainable%: {100 * trainable / total:.4f}")
    logits_t, loss_t, grads_t = torch_loss_and_grads(tm, IDS, LABELS)
    tol = TOL[dtype]
    assert cmp("logits", pm(IDS), logits_t, tol) <= tol
    loss, grads = pm.loss_and_grads(IDS, LABELS)
    assert cmp("loss", loss, loss_t, tol) <= tol
    assert_close(grads, grads_t, tol)


def test_training_dropout_equals_adapterhub_with_the_same_masks(hf_checkpoint):
    """Dropout in training: AdapterHub run with minipeft's masks (its RNG cannot be shared)."""
    import torch
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    tm, pm = make_pair(hf_model, "houlsby", dict(reduction_factor=4, dropout=0.3, scaling="learned"))
    pm.train(seed=11)
    loss, grads = pm.loss_and_grads(IDS, LABELS)
    pm.train(seed=11)
    _, cache = pm.forward(IDS)

    class Fixed(torch.nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.mask = torch.as_tensor(mask)

        def forward(self, x):
            return x * self.mask.reshape(x.shape)

    for i, block in enumerate(tm.transformer.h):
        for where, layer in (("attn", block.attention_adapters), ("mlp", block.output_adapters)):
            layer.adapters["default"].dropout = Fixed(cache["layers"][i][f"{where}.residual"]["mask"])
    _, loss_t, grads_t = torch_loss_and_grads(tm, IDS, LABELS)
    assert cmp("loss", loss, loss_t, 1e-10) <= 1e-10
    assert_close(grads, grads_t, 1e-10)
    assert abs(loss - pm.eval().loss(IDS, LABELS)) > 1e-6 * abs(loss)   # dropout did something


@pytest.mark.parametrize("name", T.ACTIVATIONS)
def test_activations_are_adapterhubs(name):
    """Each non_linearity, forward and backward, twin and kernel, against AdapterHub's
    Activation_Function_Class (transformers' get_activation; "gelu" is the exact erf form)."""
    import torch
    from adapters.methods.modeling import Activation_Function_Class
    rng = np.random.default_rng(1)
    p = rng.standard_normal((40, 6)) * 3
    p[0, :3] = 0.0                                       # relu's kink: torch's derivative there is 0
    b, dd = np.zeros(6), rng.standard_normal((40, 6))
    h = torch.tensor(p, requires_grad=True)
    out = Activation_Function_Class(name)(h)
    out.backward(torch.as_tensor(dd))
    for ops in (T, K):
        d, cache = ops.bias_act_forward(p, b, name)
        dp, _ = ops.bias_act_backward(dd, cache, name)
        assert max_rel(d, out.detach().numpy())[1] <= 1e-14
        assert max_rel(dp, h.grad.numpy())[1] <= 1e-14


# ------------------------------------------------------------------ inits and invariants
def test_inits_follow_adapterhubs_distributions():
    """Weights drawn with minipeft's init and with AdapterHub's Adapter module, at GPT-2
    124M's size (C 768, m 48): zeros where AdapterHub puts zeros, and the same bounds and
    standard deviations (±3 %: ~37k samples, a std estimate's error is ~0.4 %)."""
    import adapters
    import torch
    from adapters.methods.modeling import Adapter
    C, m = 768, 48
    expected_std = {"bert": 0.02, "houlsby": 0.01 * 0.8796, "mam_adapter": 1 / np.sqrt(3 * C)}
    bound = {"bert": np.inf, "houlsby": 0.02, "mam_adapter": 1 / np.sqrt(C)}
    torch.manual_seed(0)
    for init in T.INITS:
        ours = T.init_adapter(init, C, m, np.random.default_rng(0), np.float64)
        mod = Adapter("a", C, m, adapters.SeqBnConfig(init_weights=init))
        theirs = [t.detach().numpy() for t in (mod.adapter_down[0].weight, mod.adapter_down[0].bias,
                                               mod.adapter_up.weight, mod.adapter_up.bias)]
        for o, t in zip(ours, theirs):
            assert o.shape == t.shape
            if not t.any():
                assert not o.any(), init
                continue
            for w in (o, t):
                assert np.abs(w).max() <= bound[init]
                assert abs(w.std() / expected_std[init] - 1) < 0.03 and abs(w.mean()) < 0.1 * w.std()


@pytest.mark.parametrize("preset", list(AH_CLASS))
def test_a_zero_up_projection_leaves_the_logits_exactly_unchanged(hf_checkpoint, preset):
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    base = GPT2.from_pretrained(folder)
    for kernels in (True, False):
        base.use_kernels = kernels                       # GPT-2's own ops the same way on both sides
        ref = base(IDS)
        config = BottleneckConfig(preset=preset, reduction_factor=4, init_weights="mam_adapter")
        pm = get_peft_model(base, config)
        pm.use_kernels = kernels
        assert np.array_equal(pm(IDS), ref)
        pm.adapters["default"]["transformer.h.1.output_adapters"]["adapter_up.bias"][:] = 0.5
        assert not np.array_equal(pm(IDS), ref)          # a non-zero up-projection does change them
        with pm.disable_adapter():
            assert np.array_equal(pm(IDS), ref)


# ------------------------------------------------------------------ finite differences
@pytest.mark.parametrize("preset,overrides", [
    ("houlsby", dict(reduction_factor=6, non_linearity="gelu", ln_before=True, ln_after=True,
                     scaling="learned", original_ln_before=True, residual_before_ln=False,
                     adapter_residual_before_ln=True, dropout=0.2)),
    ("parallel", dict(reduction_factor=6, non_linearity="swish", ln_after=True, scaling="channel",
                      mh_adapter=True)),
], ids=["sequential-everything-dropout", "parallel-channel"])
def test_finite_differences_of_the_loss(hf_checkpoint, preset, overrides):
    """Every entry of every adapter tensor, float64, through the kernels; with dropout the
    same masks on every call (the random stream restarted)."""
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    pm = get_peft_model(GPT2.from_pretrained(folder, dtype=np.float64),
                        BottleneckConfig(preset=preset, **overrides))
    rng = np.random.default_rng(2)
    params = pm.trainable_parameters()
    for p in params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    ids, labels = IDS[:, :6], LABELS[:, :6]

    def loss():
        return pm.train(seed=5).loss(ids, labels)
    _, grads = pm.train(seed=5).loss_and_grads(ids, labels)
    assert sorted(grads) == sorted(params)
    for name, p in params.items():
        assert max_rel(grads[name], numerical_gradient(loss, p, h=1e-5))[1] <= FD_TOL, name


# ------------------------------------------------------------------ kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_equal_twins(dtype):
    rng = np.random.default_rng(0)
    f = lambda *shape: (2 * rng.standard_normal(shape)).astype(dtype)
    N, C, m = 17, 12, 5
    p = f(N, m + 3)[:, 1:1 + m]                          # strided, as a slice may come
    b, dd = f(m), f(N, m)
    for name in T.ACTIVATIONS:
        d, cache = K.bias_act_forward(p, b, name)
        d_t, cache_t = T.bias_act_forward(p, b, name)
        dp, db = K.bias_act_backward(dd, cache_t, name)
        dp_t, db_t = T.bias_act_backward(dd, cache_t, name)
        check({"d": d, "h": cache[0], "dp": dp, "db": db},
              {"d": d_t, "h": cache_t[0], "dp": dp_t, "db": db_t}, dtype)
    q, bu, do, res = f(N, C), f(C), f(N, C), f(N, C)
    mask = (rng.random((N, C)) > 0.3).astype(dtype) / dtype(0.7)
    for scaling in (2.5, 1 + f(1), 1 + f(C)):
        for mk, r in ((None, None), (mask, None), (None, res), (mask, res)):
            o, cache = K.scale_forward(q, bu, scaling, mk, r)
            o_t, cache_t = T.scale_forward(q, bu, scaling, mk, r)
            dq, db, ds = K.scale_backward(do, cache_t)
            dq_t, db_t, ds_t = T.scale_backward(do, cache_t)
            ours, ref = dict(o=o, u=cache[0], dq=dq, db=db), dict(o=o_t, u=cache_t[0], dq=dq_t, db=db_t)
            if isinstance(scaling, float):                   # a fixed s has no gradient
                assert ds is None and ds_t is None
            else:
                ours["ds"], ref["ds"] = ds, ds_t
            check(ours, ref, dtype)


def check(ours, ref, dtype):
    """Within KERNEL_TOL of the twin, in the input dtype."""
    assert_close(ours, ref, KERNEL_TOL[dtype], verbose=False)
    assert all(np.asarray(v).dtype == dtype for v in ours.values())


# ------------------------------------------------------------------ files
def test_save_and_load_round_trip(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    base = GPT2.from_pretrained(folder)
    config = BottleneckConfig(preset="houlsby", reduction_factor={"0": 3, "default": 6}, ln_before=True,
                              scaling="learned", non_linearity="tanh")
    pm = get_peft_model(base, config)
    rng = np.random.default_rng(4)
    for p in pm.trainable_parameters().values():
        p += rng.standard_normal(p.shape).astype(p.dtype)
    pm.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOTTLENECK" and saved["preset"] == "houlsby"
    assert saved["reduction_factor"] == {"0": 3, "default": 6}
    from safetensors.numpy import load_file
    keys = sorted(load_file(tmp_path / "a" / "adapter_model.safetensors"))
    assert "base_model.model.transformer.h.0.attention_adapters.adapter_down.1.weight" in keys
    assert all(re.fullmatch(r"base_model\.model\.transformer\.h\.\d\.(attention|output)_adapters\.(adapter_"
                            r"(down\.1|up)\.(weight|bias)|adapter_norm_before\.(weight|bias)|scaling)", k)
               for k in keys)
    loaded = PeftModel.from_pretrained(base, tmp_path / "a")
    assert isinstance(loaded, BottleneckModel) and loaded.trainable_parameters() == {}
    assert loaded.peft_config["default"].to_dict() == \
        {**pm.peft_config["default"].to_dict(), "inference_mode": True}
    assert_close(loaded._adapter_arrays("default"), pm._adapter_arrays("default"), 0.0, verbose=False)
    assert np.array_equal(loaded(IDS), pm(IDS))
    trainable = BottleneckModel.from_pretrained(base, tmp_path / "a", is_trainable=True)
    assert sorted(trainable.trainable_parameters()) == keys
    pm.add_adapter("other", BottleneckConfig(reduction_factor=8))
    pm.load_adapter(tmp_path / "a", "again")
    pm.set_adapter("again")
    assert np.array_equal(pm(IDS), loaded(IDS))


def test_loading_refuses_another_model_size_or_method(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    base = GPT2.from_pretrained(folder)
    get_peft_model(base, BottleneckConfig(reduction_factor=4)).save_pretrained(tmp_path / "bn")
    for other in (dict(SMALL, n_embd=12), dict(SMALL, n_layer=3)):
        other_folder, _ = hf_checkpoint(seed=3, **other)
        with pytest.raises(CheckpointError, match="another model"):
            PeftModel.from_pretrained(GPT2.from_pretrained(other_folder), tmp_path / "bn")
    lora = get_peft_model(GPT2.from_pretrained(folder), LoraConfig(fan_in_fan_out=True))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(ConfigError, match="LORA adapter"):
        BottleneckModel.from_pretrained(base, tmp_path / "lora")
    pm = get_peft_model(base, BottleneckConfig())
    with pytest.raises(ConfigError, match="LORA adapter"):
        pm.load_adapter(tmp_path / "lora", "x")


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(reduction_factor=0), "number > 0"),
    (dict(reduction_factor=-2), "number > 0"),
    (dict(reduction_factor={"x": 4}), "number > 0"),
    (dict(non_linearity="sigmoid"), "non_linearity 'sigmoid' is unknown"),
    (dict(mh_adapter=False, output_adapter=False), "neither mh_adapter nor output_adapter"),
    (dict(preset="lora"), "preset 'lora' is unknown"),
    (dict(residual_before_ln="post_add"), "post_add"),
    (dict(init_weights="lora"), "init_weights 'lora' is unknown"),
    (dict(scaling="fixed"), "scaling must be"),
    (dict(reduction=4), "Did you mean 'reduction_factor'"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(leave_out=[-1]), "leave_out"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BottleneckConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(reduction_factor=32), r"bottleneck of int\(24 // 32\) = 0 for n_embd=24"),
    (dict(reduction_factor={"0": 4}), "no factor for layer 1"),
    (dict(leave_out=[5]), "leave_out"),
])
def test_errors_that_need_the_model(hf_checkpoint, kwargs, match):
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    with pytest.raises(ConfigError, match=match):
        get_peft_model(GPT2.from_pretrained(folder), BottleneckConfig(**kwargs))


def test_reading_refuses_adapterhub_options_minipeft_lacks():
    import adapters
    d = adapters.SeqBnConfig(reduction_factor=8).to_dict()
    assert BottleneckConfig.from_dict(d) == BottleneckConfig(reduction_factor=8)
    with pytest.raises(ConfigError, match="use_gating=True"):
        BottleneckConfig.from_dict({**d, "use_gating": True})


def test_config_fields_in_the_contracts_order():
    """CONTRACT.md: BottleneckConfig(reduction_factor, non_linearity, mh_adapter, output_adapter, ...)."""
    c = BottleneckConfig(8, "tanh", True, False)
    assert (c.reduction_factor, c.non_linearity, c.mh_adapter, c.output_adapter) == (8, "tanh", True, False)
    assert c.preset == "pfeiffer"
