"""Extreme inputs: softmax (attention, cross-entropy), layernorm and GELU stay finite and
right; a model with huge weights; float16 and bfloat16 checkpoints up-cast exactly.

The reference is torch on the same values: in the same dtype where torch's answer is
finite, else in float64 on the float32 values up-cast (exact), which is the true
answer to float32's precision. Where minipeft is finite and torch float32 is not, the
test says so. Measure: max|a - b| / max|b| (``minipeft.testing.max_rel``).
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
from conftest import build_hf_model, torch_reference

from minipeft import GPT2, GPT2Config
from minipeft.ops import (
    attention_backward,
    attention_forward,
    attention_mask_allowed,
    cross_entropy_backward,
    cross_entropy_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
)
from minipeft.testing import max_rel

torch = pytest.importorskip("torch")
F = torch.nn.functional

F32_MAX = float(np.finfo(np.float32).max)            # 3.4028235e38
DTYPES = [np.float32, np.float64]
# Tolerances, max_rel against the reference:
TOL = {np.float32: 1e-5,      # float32 rounding (6e-8) summed over C <= 768 terms
       np.float64: 1e-12}     # float64 rounding over the same sums, with room for exp/log
rng = np.random.default_rng(0)


def rel(ours, ref) -> float:
    return max_rel(ours, ref)[1]


def t(x, grad=False):
    return torch.tensor(np.asarray(x), requires_grad=grad)


# ---------------------------------------------------------------- cross-entropy
def extreme_logits(big, dtype):
    """Rows mixing +big, -big and ordinary logits; targets on +big, on -big, in between,
    and on a row where +big is shared (so the softmax is not one-hot)."""
    x = rng.standard_normal((5, 7))
    x[0, [1, 4]] = big, -big
    x[1, [0, 2]] = -big, big
    x[2, [3, 5]] = big, big
    x[3, :] = -big
    x[3, 6] = big
    x[4, [0, 1]] = big, -big
    targets = np.array([1, 0, 5, 2, 6])        # on +big, on -big, on a shared +big, ...
    return x.astype(dtype), targets


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", [1e4, 3e38, F32_MAX])
def test_cross_entropy_extreme_logits(big, dtype):
    """Finite loss and gradient; equal to torch. Float32 logits of ±3e38 lose 6e38 on a
    -big target: torch float32 says inf, minipeft (a float64 loss) says 6e38, as torch
    float64 does on the same values."""
    x, targets = extreme_logits(big, dtype)
    loss, cache = cross_entropy_forward(x, targets)
    dlogits = cross_entropy_backward(1.0, cache)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert dlogits.dtype == dtype

    x64 = t(x.astype(np.float64), grad=True)
    ref64 = F.cross_entropy(x64, t(targets))
    ref64.backward()
    assert abs(loss - ref64.item()) <= 1e-12 * abs(ref64.item())     # both float64 sums of the same terms
    assert rel(dlogits, x64.grad) <= TOL[dtype]

    xs = t(x, grad=True)
    ref = F.cross_entropy(xs, t(targets))
    ref.backward()
    if dtype == np.float32 and big >= 3e38:
        assert not np.isfinite(ref.item())     # torch float32 overflows; minipeft does not
    else:
        assert loss == pytest.approx(ref.item(), rel=TOL[dtype])
    assert rel(dlogits, xs.grad) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_with_minus_inf_entries(dtype):
    """Masked vocabulary (-inf logits): finite loss, zero gradient there, as torch; a
    target on a -inf logit has probability 0 and loss inf, in torch too."""
    x = rng.standard_normal((4, 6)).astype(dtype)
    x[0, [1, 2]] = -np.inf
    x[1, :5] = -np.inf                          # one finite entry left: p = 1 there
    x[2, 0] = -np.inf
    x[3, 5] = -np.inf
    targets = np.array([0, 5, 3, -100])        # -100: ignored
    loss, cache = cross_entropy_forward(x, targets)
    dlogits = cross_entropy_backward(1.0, cache)
    xs = t(x, grad=True)
    ref = F.cross_entropy(xs, t(targets), ignore_index=-100)
    ref.backward()
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert loss == pytest.approx(ref.item(), rel=TOL[dtype])
    assert rel(dlogits, xs.grad) <= TOL[dtype]
    assert (dlogits[np.isneginf(x)] == 0).all()

    on_masked = np.array([1, 5, 3, -100])       # row 0's target is a -inf logit
    loss, _ = cross_entropy_forward(x, on_masked)
    assert loss == np.inf == F.cross_entropy(t(x), t(on_masked)).item()


# ---------------------------------------------------------------- attention softmax
def torch_attention(q, k, v, allowed, dy):
    """The same attention in torch autograd: y and dq, dk, dv."""
    q, k, v = (t(a, grad=True) for a in (q, k, v))
    s = q @ k.transpose(-1, -2) / np.sqrt(q.shape[-1])
    p = torch.softmax(s.masked_fill(~t(allowed), -torch.inf), dim=-1)
    y = p @ v
    y.backward(t(dy))
    return y.detach(), p.detach(), q.grad, k.grad, v.grad


def close_to_float64(ours, ref64, tol) -> bool:
    """max|a - b| <= tol · max(max|b|, 1): these tensors are O(1) or larger, and a float64
    reference far below 1 (exp(-200) = 1e-87, where float32 has 0) counts as 0."""
    diff = float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(ref64))))
    return diff <= tol * max(float(np.max(np.abs(np.asarray(ref64)))), 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", [1e4, 3e38, F32_MAX])
def test_attention_softmax_extreme_scores(big, dtype):
    """Scores of exactly ±big (hs = 1, q = ±1, so s = q k) beside -inf entries (causal
    and padding): p, y and the three gradients finite and equal to torch. The max of
    each row is unique, so p is one-hot and dq = dk = 0 exactly. (With two keys tied at
    big, dq = (ds_a + ds_b)·big is rounding times big in any library.)"""
    B, NH, T = 2, 1, 6
    k = np.broadcast_to(np.array([big, -big, 0.3, 0.9, -0.5 * big, 0.5 * big]), (B, NH, T))
    k = np.ascontiguousarray(k)[..., None]                     # (B, NH, T, 1)
    q = rng.choice([-1.0, 1.0], (B, NH, T, 1))
    v, dy = rng.standard_normal((B, NH, T, 1)), rng.standard_normal((B, NH, T, 1))
    q, k, v, dy = (a.astype(dtype) for a in (q, k, v, dy))
    key_mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 1]])  # padding keys: -inf
    allowed = attention_mask_allowed(T, T, key_mask)
    y, cache = attention_forward(q, k, v, allowed)
    dq, dk, dv = attention_backward(dy.copy(), cache)
    ours = {"y": y, "p": cache[3], "dq": dq, "dk": dk, "dv": dv}
    for name, a in ours.items():
        assert np.isfinite(a).all() and a.dtype == dtype, name
    p = ours["p"]
    assert np.array_equal(p.sum(-1), np.ones((B, NH, T))) and set(np.unique(p)) <= {0, 1}
    assert not (dq.any() or dk.any())

    same = dict(zip(ours, torch_attention(q, k, v, allowed, dy)))
    ref64 = dict(zip(ours, torch_attention(*(a.astype(np.float64) for a in (q, k, v)), allowed,
                                           dy.astype(np.float64))))
    for name in ours:
        assert rel(ours[name], same[name]) <= TOL[dtype], name
        assert close_to_float64(ours[name], ref64[name], TOL[dtype]), name


def test_attention_row_that_sees_no_key():
    """A query whose every key is masked (left padding) gets p = 0 and y = 0, with zero,
    finite gradients; torch's softmax of an all -inf row is nan."""
    q, k, v, dy = (rng.standard_normal((1, 1, 3, 4)) for _ in range(4))
    allowed = attention_mask_allowed(3, 3, np.array([[0, 1, 1]]))
    y, cache = attention_forward(q, k, v, allowed)
    dq, dk, dv = attention_backward(dy, cache)
    assert (y[0, 0, 0] == 0).all() and (cache[3][0, 0, 0] == 0).all()
    assert (dq[0, 0, 0] == 0).all() and np.isfinite(dk).all() and np.isfinite(dv).all()
    assert torch.isnan(torch_attention(q, k, v, allowed, dy)[0][0, 0, 0]).all()


# ---------------------------------------------------------------- layernorm
def layernorm_both(x, g, b, dout):
    out, cache = layernorm_forward(x, g, b, 1e-5)
    return (out, *layernorm_backward(dout, cache))


def torch_layernorm(x, g, b, dout):
    xs, gs, bs = t(x, grad=True), t(g, grad=True), t(b, grad=True)
    out = F.layer_norm(xs, (x.shape[-1],), gs, bs, 1e-5)
    out.backward(t(dout))
    return out.detach(), xs.grad, gs.grad, bs.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [0.1, 10000.3, -7e5, 1e-30, 1e20, 3e38, F32_MAX])
@pytest.mark.parametrize("C", [64, 768])
def test_layernorm_of_a_constant_row_is_its_bias(value, C, dtype):
    """A constant row: xhat = 0 exactly, so out = b exactly, dg = 0, db = Σ dout, and
    dx = (dxhat - mean(dxhat)) / √eps, finite. (A plain float32 mean of 768 copies of
    10000.3 is off by ~1e-3 and gave |out - b| = 0.44; torch float32 has that gradient
    to 1e-4 only, and nan at 3e38.)"""
    x = np.full((3, C), value, dtype)
    g, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal((3, C)).astype(dtype)
    out, dx, dg, db = layernorm_both(x, g, b, dout)
    assert np.array_equal(out, np.broadcast_to(b, out.shape))
    assert (dg == 0).all()
    assert rel(db, dout.sum(0)) <= TOL[dtype]
    dxhat = dout.astype(np.float64) * g
    exact = (dxhat - dxhat.mean(-1, keepdims=True)) / np.sqrt(1e-5)
    assert np.isfinite(dx).all() and rel(dx, exact) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e-20, 1e4, 1e19, 1e30, 1e37])
def test_layernorm_of_huge_and_tiny_rows(scale, dtype):
    """Rows of scale × randn up to 1e37 in float32 (one with a mean 5 × scale away from 0):
    equal to torch float64 on the same values. In float32, x² overflows beyond 1.8e19;
    torch float32 gives nan at 1e30."""
    C = 64
    x = (scale * rng.standard_normal((4, C))).astype(dtype)
    x[1] += np.asarray(5 * scale, dtype)                  # a mean far from 0
    g, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal((4, C)).astype(dtype)
    ours = layernorm_both(x, g, b, dout)
    ref64 = torch_layernorm(*(a.astype(np.float64) for a in (x, g, b, dout)))
    for name, a, r in zip(("out", "dx", "dg", "db"), ours, ref64):
        assert np.isfinite(a).all() and a.dtype == dtype, name
        assert rel(a, r) <= TOL[dtype], (name, rel(a, r))
    if dtype == np.float32 and scale >= 1e30:
        assert torch.isnan(torch_layernorm(x, g, b, dout)[0]).all()


def test_layernorm_out_of_float32_range_is_nan_not_wrong():
    """Entries ±3e38 in one float32 row differ by more than float32 holds: the output is
    nan, as torch's, rather than a wrong finite number."""
    x = np.array([[3e38, -3e38] * 32], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        out, _ = layernorm_forward(x, np.ones(64, np.float32), np.zeros(64, np.float32), 1e-5)
    assert np.isnan(out).all()


# ---------------------------------------------------------------- GELU
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_at_extremes(dtype):
    """gelu(x) = x and gelu'(x) = 1 for huge x, -0 and 0 for huge -x: finite up to
    float32's max, equal to torch float64 (torch float32's gradient is nan beyond ~2e19,
    where x² overflows)."""
    x = np.array([1e4, -1e4, 1e19, -1e19, 3e19, -3e19, 3e38, -3e38, F32_MAX, -F32_MAX], dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    with np.errstate(over="ignore"):                # x³ inside u overflows: tanh(±inf) = ±1
        out, cache = gelu_forward(x)
        dx = gelu_backward(dout, cache)             # which recomputes tanh(u) from x
    assert np.isfinite(out).all() and np.isfinite(dx).all()
    xs = t(x.astype(np.float64), grad=True)
    ref = F.gelu(xs, approximate="tanh")
    ref.backward(t(dout.astype(np.float64)))
    assert np.array_equal(out, ref.detach().numpy().astype(dtype))
    assert np.array_equal(dx, xs.grad.numpy().astype(dtype))
    small = t(x[:2], grad=True)                     # ±1e4: torch is finite in either dtype
    F.gelu(small, approximate="tanh").backward(t(dout[:2]))
    assert np.array_equal(dx[:2], small.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_gradient_is_unchanged_around_the_clip(dtype):
    """The backward clips x to ±100 before x² (beyond, 1 - tanh² is exactly 0): across
    [-150, 150] its gradient equals torch's in the same dtype."""
    x = np.linspace(-150, 150, 3001).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    _, cache = gelu_forward(x)
    dx = gelu_backward(dout, cache)
    xs = t(x, grad=True)
    F.gelu(xs, approximate="tanh").backward(t(dout))
    assert rel(dx, xs.grad) <= TOL[dtype]


# ---------------------------------------------------------------- a model with huge weights
CFG = dict(n_layer=2, n_head=2, n_embd=64, n_positions=32, vocab_size=2000)


def scaled_models(scale, dtype):
    """(minipeft GPT2, transformers model) with every weight matrix and gain × scale."""
    hf = build_hf_model(seed=5, **CFG).to(getattr(torch, np.dtype(dtype).name))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".weight"):
                p.mul_(scale)
    params = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()
              if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))}
    return GPT2(GPT2Config(**CFG), params), hf


IDS = rng.integers(0, CFG["vocab_size"], size=(2, 16))


def largest_rel(grads, ref) -> float:
    return max(rel(grads[k], ref[k]) for k in ref)


def test_weights_times_1000_give_finite_logits_equal_to_torch():
    """×1e3 weights: logits ~1e6, loss ~5e5, gradients, all finite. Logits and loss equal
    transformers' (float32 within 1e-4, the project's float32 tolerance; float64 within
    1e-10). The gradients pass through a nearly one-hot attention softmax, where torch
    is noisy: its float64 gradients move by ~2e-5 when the weights move by 1e-15
    (minipeft's by ~1e-12, asserted below), and its float32 ones are off by 1e3 or more
    (not asserted). So minipeft's float64 gradients are held to torch float64 within ten
    times torch's own noise, measured here, and minipeft's float32 to its float64 within
    1e-3 (float32 rounding through that softmax; 9e-5 measured)."""
    model32, hf32 = scaled_models(1e3, np.float32)
    model = model32.astype(np.float64)                  # the same values, in float64
    ref32 = torch_reference(hf32, IDS, IDS, dtype="float32")
    ref = torch_reference(hf32, IDS, IDS, dtype="float64")
    for m, r, tol in ((model32, ref32, 1e-4), (model, ref, 1e-10)):
        logits = m(IDS)
        assert np.isfinite(logits).all() and np.abs(logits).max() > 1e5
        assert rel(logits, r["logits"]) <= tol
        assert abs(m.loss(IDS, IDS) - r["loss"]) <= tol * abs(r["loss"])

    loss, grads = model.loss_and_grads(IDS, IDS)
    loss32, grads32 = model32.loss_and_grads(IDS, IDS)
    assert np.isfinite(loss32) and all(np.isfinite(g).all() for g in grads32.values())
    nudge = np.random.default_rng(1)
    nudged = {k: v * (1 + 1e-15 * nudge.standard_normal(v.shape)) for k, v in model.params.items()}
    _, grads_nudged = GPT2(model.config, nudged).loss_and_grads(IDS, IDS)
    assert largest_rel(grads_nudged, grads) <= 1e-9             # minipeft is stable here
    hf_nudged = copy.deepcopy(hf32).double()
    with torch.no_grad():
        for name, p in hf_nudged.named_parameters():
            p.copy_(torch.from_numpy(nudged[name] if name in nudged else nudged["transformer.wte.weight"]))
    torch_noise = largest_rel(torch_reference(hf_nudged, IDS, IDS)["grads"], ref["grads"])
    print(f"\ngradients, max_rel: minipeft float64 vs torch float64 {largest_rel(grads, ref['grads']):.1e}; "
          f"torch float64 nudged by 1e-15 {torch_noise:.1e}; minipeft nudged "
          f"{largest_rel(grads_nudged, grads):.1e}; "
          f"minipeft float32 vs float64 {largest_rel(grads32, grads):.1e}; "
          f"torch float32 vs float64 {largest_rel(ref32['grads'], ref['grads']):.1e}")
    assert largest_rel(grads, ref["grads"]) <= max(1e-10, 10 * torch_noise)
    assert largest_rel(grads32, grads) <= 1e-3


def test_weights_beyond_float32_give_nan_and_training_stops_clearly():
    """×1e10 in float32: attention scores ~1e40 overflow float32, so the logits are nan,
    as in transformers (the forward is plain arithmetic and does not check); training
    such a model stops at step 1 with TrainingError, the weights untouched. In float64
    the same model is finite."""
    from minipeft.train.trainer import Trainer, TrainingArguments, TrainingError
    model, hf = scaled_models(1e10, np.float32)
    with np.errstate(all="ignore"):
        logits = model(IDS)
    with torch.no_grad():
        ref = hf(torch.as_tensor(IDS)).logits.numpy()
    assert np.isnan(logits).any() and not np.isfinite(ref).all()
    assert np.isfinite(model.astype(np.float64)(IDS)).all()

    before = {k: v.copy() for k, v in model.params.items()}
    trainer = Trainer(model, TrainingArguments(max_steps=3), lambda step: [(IDS, IDS, None)],
                      progress=False)
    with np.errstate(all="ignore"), pytest.raises(TrainingError, match="step 1"):
        trainer.train()
    assert all(np.array_equal(before[k], model.params[k]) for k in before)


# ---------------------------------------------------------------- float16 / bfloat16 checkpoints
EXTREMES = {"float16": [65504.0, -65504.0, 2.0 ** -24, -0.0, 1e-3],          # max, smallest subnormal
            "bfloat16": [3.3895314e38, -3.3895314e38, 9.18355e-41, -0.0, 1e-3]}


def saved_dtypes(path) -> set[str]:
    """The dtypes of the tensors in a safetensors file (its JSON header) or a .bin."""
    if path.suffix == ".safetensors":
        data = path.read_bytes()
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
        return {names[v["dtype"]] for k, v in header.items() if k != "__metadata__"}
    return {str(v.dtype).removeprefix("torch.") for v in torch.load(path, weights_only=True).values()}


@pytest.mark.parametrize("how", ["safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_checkpoints_are_up_cast_exactly(tmp_path, half, how):
    """A transformers model saved in float16 (model.half()) or bfloat16 (torch_dtype=
    torch.bfloat16), as safetensors or a .bin: every tensor loads as float32 equal bit for
    bit to torch's own up-cast of the half values (extremes and -0.0 included), within
    half an ulp of the float32 weights, and gives transformers' logits."""
    from transformers import GPT2LMHeadModel
    hf = build_hf_model(seed=6, **CFG)
    with torch.no_grad():                               # positions 16+ are not used by IDS
        hf.transformer.wpe.weight[31, :5] = torch.tensor(EXTREMES[half])
    full = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    safe = how == "safetensors"
    if half == "float16":
        copy.deepcopy(hf).half().save_pretrained(tmp_path / "half", safe_serialization=safe)
    else:
        hf.save_pretrained(tmp_path / "f32")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            low = GPT2LMHeadModel.from_pretrained(tmp_path / "f32", torch_dtype=torch.bfloat16)
        low.save_pretrained(tmp_path / "half", safe_serialization=safe)
    saved = tmp_path / "half" / ("model.safetensors" if safe else "pytorch_model.bin")
    assert saved_dtypes(saved) == {half}

    model = GPT2.from_pretrained(tmp_path / "half")
    ulp = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}[half]      # half an ulp, relative
    tiny = {"float16": 2.0 ** -14, "bfloat16": 2.0 ** -126}[half]    # smallest normal number
    for k, ours in model.params.items():
        assert ours.dtype == np.float32, k
        upcast = torch.from_numpy(full[k]).to(getattr(torch, half)).float().numpy()
        assert np.array_equal(ours, upcast) and np.array_equal(np.signbit(ours), np.signbit(upcast)), k
        normal = np.abs(full[k]) >= tiny
        assert (np.abs(ours - full[k])[normal] <= ulp * np.abs(full[k])[normal]).all(), k
    assert model.params["transformer.wpe.weight"][31, :5].tolist() == \
        torch.tensor(EXTREMES[half]).to(getattr(torch, half)).float().tolist()
    assert np.signbit(model.params["transformer.wpe.weight"][31, 3])

    hf_up = copy.deepcopy(hf).to(getattr(torch, half)).float().eval()
    with torch.no_grad():
        ref = hf_up(torch.as_tensor(IDS)).logits.numpy()
    assert rel(model(IDS), ref) <= 1e-4                 # float32 forward, the project's tolerance
