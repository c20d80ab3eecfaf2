"""lora_init and combine_lora against peft 0.21.2 on a tiny GPT-2 (float64 where peft allows).

Each test builds the torch model, copies the base weights *before* get_peft_model
(PiSSA and OLoRA rewrite them), and compares layer by layer, printing max_rel.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from minipeft.errors import ConfigError  # noqa: E402
from minipeft.peft.lora import lora_scaling  # noqa: E402
from minipeft.peft.lora_init import _clamp_factors, combine_lora, lora_init  # noqa: E402
from minipeft.testing import cmp  # noqa: E402

CFG = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
TARGETS = ["c_attn", "c_proj"]      # c_attn (16, 48), attn.c_proj (16, 16), mlp.c_proj (64, 16)
# float64 agreement: same formulas, only summation order and LAPACK differ.
TOL64 = 1e-10
# peft runs PiSSA/OLoRA in float32 (it refuses float64); float32 SVD/QR from MKL (torch)
# and OpenBLAS (numpy) agree to ~eps32·σ₁/gap ≈ 1e-5 here.
TOL32 = 5e-5


def gpt2_lora(**kw):
    """LoraConfig on c_attn and both c_proj; Conv1D stores W as (in, out): fan_in_fan_out."""
    kw.setdefault("target_modules", TARGETS)
    return LoraConfig(fan_in_fan_out=True, **kw)


def tiny_gpt2(dtype, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**CFG)).to(dtype).eval()


def base_weights(model):
    """{module name: Conv1D weight (in, out)} of the targeted layers, copied."""
    return {n: m.weight.detach().numpy().copy() for n, m in model.named_modules()
            if n.endswith(tuple(TARGETS))}


def lora_layers(peft_model):
    """[(name in the plain model, LoraLayer)] of every adapted Conv1D."""
    return [(n.removeprefix("base_model.model."), m) for n, m in peft_model.named_modules()
            if isinstance(m, LoraLayer)]


def np_(t):
    return t.detach().numpy()


def peft_ab(layer, name="default"):
    return np_(layer.lora_A[name].weight), np_(layer.lora_B[name].weight)


def as_tuples(layer, names):
    """combine_lora's input: [(A, B, scaling, r, lora_alpha)] of the named adapters."""
    return [(*peft_ab(layer, n), layer.scaling[n], layer.r[n], layer.lora_alpha[n]) for n in names]


# ---------------------------------------------------------------- random inits

@pytest.mark.parametrize("init", [True, False, "gaussian"])
def test_random_init_distribution(init):
    """Ours: bounds and std on a layer big enough for statistics; peft: same bounds."""
    n_in, n_out, r = 256, 96, 16
    W = np.zeros((n_in, n_out))
    A, B, new = lora_init(init, W, r, 32, False, np.random.default_rng(0))
    assert new is None and A.shape == (r, n_in) and B.shape == (n_out, r) and A.dtype == W.dtype
    # 4096 samples: the sample std is within ~1.1% of the truth (1 sigma); allow 5%.
    if init == "gaussian":
        assert abs(A.std() / (1 / r) - 1) < 0.05 and abs(A.mean()) < 0.05 / r
    else:
        bound = 1 / math.sqrt(n_in)                       # kaiming_uniform(a=√5)
        assert np.abs(A).max() <= bound and np.abs(A).max() > 0.99 * bound
        assert abs(A.std() / (bound / math.sqrt(3)) - 1) < 0.05
    if init is False:                                     # peft leaves nn.Linear's init
        assert np.abs(B).max() <= 1 / math.sqrt(r) and np.abs(B).max() > 0.9 / math.sqrt(r)
    else:
        assert not B.any()
    A32 = lora_init(init, W.astype(np.float32), r, 32, False, np.random.default_rng(0))[0]
    assert A32.dtype == np.float32

    pm = get_peft_model(tiny_gpt2(torch.float64), gpt2_lora(
        r=4, lora_alpha=8, init_lora_weights=init))
    for _, layer in lora_layers(pm):
        Ap, Bp = peft_ab(layer)
        assert np.abs(Ap).max() <= 1 / math.sqrt(Ap.shape[1]) or init == "gaussian"
        assert (not Bp.any()) == (init is not False)
        assert init is not False or np.abs(Bp).max() <= 1 / math.sqrt(4)


# ---------------------------------------------------------------- PiSSA and OLoRA

def align_signs(A, B, A_ref):
    """SVD factors are defined up to a sign per component; flip ours onto the reference."""
    sign = np.sign(np.sum(A * A_ref, axis=1))             # (r,)
    return A * sign[:, None], B * sign[None, :]


@pytest.mark.parametrize("use_rslora", [False, True])
def test_pissa_matches_peft(use_rslora):
    model = tiny_gpt2(torch.float32)
    W0 = base_weights(model)
    pm = get_peft_model(model, gpt2_lora(r=4, lora_alpha=8, use_rslora=use_rslora,
                                         init_lora_weights="pissa"))
    for name, layer in lora_layers(pm):
        s = layer.scaling["default"]
        A, B, W = lora_init("pissa", W0[name], 4, 8, use_rslora)
        Ap, Bp = peft_ab(layer)
        A, B = align_signs(A, B, Ap)
        assert cmp(f"{name} base", W, np_(layer.base_layer.weight)) < TOL32
        assert cmp(f"{name} s·BA", s * B @ A, s * Bp @ Ap) < TOL32
        assert cmp(f"{name} A", A, Ap) < TOL32 and cmp(f"{name} B", B, Bp) < TOL32


def test_pissa_niter_matches_peft_on_low_rank_weights():
    """A randomised SVD is exact when rank(W) <= r, so peft and we must agree then."""
    model = tiny_gpt2(torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                                  # make every target rank 4
        for name, m in model.named_modules():
            if name.endswith(tuple(TARGETS)):
                n_in, n_out = m.weight.shape
                m.weight.copy_(torch.randn(n_in, 4, generator=g) @ torch.randn(4, n_out, generator=g) / 4)
    W0 = base_weights(model)
    pm = get_peft_model(model, gpt2_lora(r=4, lora_alpha=8, init_lora_weights="pissa_niter_2"))
    for name, layer in lora_layers(pm):
        A, B, W = lora_init("pissa_niter_2", W0[name], 4, 8, False, np.random.default_rng(0))
        Ap, Bp = peft_ab(layer)
        assert cmp(f"{name} s·BA", 2 * B @ A, 2 * Bp @ Ap) < TOL32
        # the residual is float32 noise around 0: measure it against W itself
        assert np.abs(W).max() < TOL32 * np.abs(W0[name]).max()
        A64, B64, _ = lora_init("pissa_niter_2", W0[name].astype(np.float64), 4, 8, False,
                                np.random.default_rng(1))
        A_ex, B_ex, _ = lora_init("pissa", W0[name].astype(np.float64), 4, 8)
        assert cmp(f"{name} niter vs exact (f64)", B64 @ A64, B_ex @ A_ex) < TOL64


@pytest.mark.parametrize("use_rslora", [False, True])
def test_olora_matches_peft_linear_layout(use_rslora):
    """peft's OLoRA on nn.Linear(in, out) with weight Wᵀ: the layout-correct reference."""
    W0 = base_weights(tiny_gpt2(torch.float32))
    for name, Wc in W0.items():
        n_in, n_out = Wc.shape
        lin = torch.nn.Sequential()
        lin.add_module("lin", torch.nn.Linear(n_in, n_out, bias=False))
        with torch.no_grad():
            lin.lin.weight.copy_(torch.from_numpy(Wc.T.copy()))
        pm = get_peft_model(lin, LoraConfig(r=4, lora_alpha=8, use_rslora=use_rslora,
                                            target_modules=["lin"], init_lora_weights="olora"))
        layer = pm.base_model.model.lin
        A, B, W = lora_init("olora", Wc, 4, 8, use_rslora)
        Ap, Bp = peft_ab(layer)
        assert cmp(f"{name} A", A, Ap) < TOL32 and cmp(f"{name} B", B, Bp) < TOL32
        assert cmp(f"{name} base", W, np_(layer.base_layer.weight).T) < TOL32


def test_peft_olora_ignores_fan_in_fan_out_on_conv1d():
    """Records a peft 0.21.2 bug: on Conv1D it factors W (in, out) itself, so A is
    (r, out) and B (in, r), and c_attn's forward fails. If this starts failing, peft
    fixed it: compare test_olora_* against GPT-2 directly."""
    pm = get_peft_model(tiny_gpt2(torch.float32), gpt2_lora(
        r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights="olora"))
    Ap, Bp = peft_ab(pm.base_model.model.transformer.h[0].attn.c_attn)
    assert Ap.shape == (4, 48) and Bp.shape == (16, 4)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_weight_moving_inits_float64_invariants(init):
    """In float64 (which peft refuses) the base + adapter still equals W to round-off."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((16, 48))
    for use_rslora in (False, True):
        s = lora_scaling(8, 4, use_rslora)
        A, B, Wn = lora_init(init, W, 4, 8, use_rslora)
        assert A.shape == (4, 16) and B.shape == (48, 4) and Wn.dtype == np.float64
        assert cmp(f"{init} base + s(BA)ᵀ", Wn + s * (B @ A).T, W) < TOL64
        if init == "pissa":                                # the rank-4 truncation of W
            U, S, Vh = np.linalg.svd(W)
            assert cmp("s·(BA)ᵀ", s * (B @ A).T, (U[:, :4] * S[:4]) @ Vh[:4]) < TOL64
        else:                                              # orthonormal B, triangular A
            assert cmp("BᵀB", B.T @ B, np.eye(4)) < TOL64 and not np.tril(A, -1)[:, :4].any()


@pytest.mark.parametrize("init", ["loftq", "eva", "corda", "orthogonal", "pissa_niter_x", "Pissa", 1])
def test_unsupported_init_raises(init):
    with pytest.raises(ConfigError, match="pissa"):
        lora_init(init, np.zeros((16, 48)), 4, 8)


def test_bad_rank_raises():
    with pytest.raises(ConfigError, match="positive"):
        lora_init(True, np.zeros((16, 48)), 0, 8)
    with pytest.raises(ConfigError, match="min"):
        lora_init("pissa", np.zeros((16, 48)), 17, 8)


# ---------------------------------------------------------------- add_weighted_adapter

# (names that are substrings of "lora_", like "a", make peft warn)
ADAPTERS = {"x": dict(r=4, lora_alpha=8), "y": dict(r=4, lora_alpha=16), "z": dict(r=2, lora_alpha=3)}


def peft_with_adapters(use_rslora=False):
    """A float64 GPT-2 with adapters x, y, z whose A and B are all random and non-zero."""
    names = list(ADAPTERS)
    pm = get_peft_model(tiny_gpt2(torch.float64), gpt2_lora(
        use_rslora=use_rslora, **ADAPTERS[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        pm.add_adapter(n, gpt2_lora(use_rslora=use_rslora, **ADAPTERS[n]))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, layer in lora_layers(pm):
            for n in names:
                for p in (layer.lora_A[n].weight, layer.lora_B[n].weight):
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return pm


CASES = [  # (adapters, weights, combination_type, extra kwargs)
    (["x", "y"], [0.7, -0.4], "linear", {}),
    (["z"], [-0.3], "cat", {}),                             # one adapter: peft forces linear
    (["x", "y", "z"], [0.7, -0.4, 1.3], "cat", {}),
    (["x", "y", "z"], [0.7, -0.4, 1.3], "svd", {}),
    (["x", "z"], [1.1, 0.6], "svd", dict(svd_rank=3, svd_full_matrices=False)),
]


@pytest.mark.parametrize("use_rslora", [False, True])
@pytest.mark.parametrize("names,weights,ctype,kw", CASES)
def test_combine_matches_add_weighted_adapter(names, weights, ctype, kw, use_rslora):
    pm = peft_with_adapters(use_rslora)
    pm.add_weighted_adapter(names, weights, "mix", combination_type=ctype, **kw)
    for name, layer in lora_layers(pm):
        adapters = as_tuples(layer, names)
        A, B, r, alpha = combine_lora(adapters, weights, ctype, **kw)
        Ap, Bp = peft_ab(layer, "mix")
        assert (r, alpha) == (layer.r["mix"], layer.lora_alpha["mix"]) and A.shape == Ap.shape
        # the combined adapter as peft applies it, with the scaling peft gives it
        delta_p = np_(layer.get_delta_weight("mix"))                       # (in, out)
        delta = lora_scaling(alpha, r, use_rslora) * (B @ A).T                # (in, out)
        assert cmp(f"{name} {ctype} delta", delta, delta_p) < TOL64
        if ctype != "svd":                 # SVD factors are defined up to sign: delta only
            assert cmp(f"{name} A", A, Ap) < TOL64 and cmp(f"{name} B", B, Bp) < TOL64


def test_combine_svd_clamp_matches_peft():
    """Clamping cuts at a quantile of the factors' entries, which depends on the sign
    LAPACK gives each singular pair (MKL in torch, OpenBLAS in numpy may differ): clamp
    our factors after aligning their signs to peft's unclamped ones."""
    pm = peft_with_adapters()
    kw = dict(svd_rank=3, svd_clamp=0.8)
    pm.add_weighted_adapter(["x", "y"], [0.5, 1.0], "mix", combination_type="svd", **kw)
    pm.add_weighted_adapter(["x", "y"], [0.5, 1.0], "raw", combination_type="svd", svd_rank=3)
    for name, layer in lora_layers(pm):
        adapters = as_tuples(layer, "xy")
        A, B, _, _ = combine_lora(adapters, [0.5, 1.0], "svd", svd_rank=3)
        Ac, Bc, _, _ = combine_lora(adapters, [0.5, 1.0], "svd", **kw)
        assert np.array_equal(Ac, _clamp_factors(A, B, 0.8)[0])             # same code path
        A, B = _clamp_factors(*align_signs(A, B, peft_ab(layer, "raw")[0]), 0.8)
        Ap, Bp = peft_ab(layer, "mix")
        assert cmp(f"{name} A", A, Ap) < TOL64 and cmp(f"{name} B", B, Bp) < TOL64


def test_combine_errors_follow_peft():
    pm = peft_with_adapters()
    with pytest.raises(ValueError, match="same r"):                        # peft's own check
        pm.add_weighted_adapter(["x", "z"], [1.0, 1.0], "mix", combination_type="linear")
    A, B = np.ones((4, 16)), np.ones((48, 4))
    a4, c2 = (A, B, 2.0, 4, 8), (A[:2], B[:, :2], 1.5, 2, 3)
    with pytest.raises(ConfigError, match="same r"):
        combine_lora([a4, c2], [1.0, 1.0], "linear")
    for ctype in ("ties", "dare_linear", "magnitude_prune_svd", "mean"):
        with pytest.raises(ConfigError, match="linear"):
            combine_lora([a4, a4], [1.0, 1.0], ctype)
    with pytest.raises(ConfigError, match="min"):
        combine_lora([a4, a4], [1.0, 1.0], "svd", svd_rank=17)
    with pytest.raises(ConfigError, match="one weight per adapter"):
        combine_lora([a4, a4], [1.0], "cat")
