"""minipeft.exercises: every reference passes its check; every wrong answer of the
misconception library (written below as a student would write it, independently of the
check's own diagnosis) fails with *its own* hint; a perturbed reference fails; a check
never raises unless asked; the notebooks' verdicts (student: all "not attempted",
solutions: all passed)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from minipeft.exercises import EXERCISES, ExerciseFailed, check

ROOT = Path(__file__).resolve().parents[1]
K = math.sqrt(2 / math.pi)


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def causal(T, P=0):
    return np.tri(T, T + P, k=P, dtype=bool)


# ====================================================================== part 1
def ln_eps_outside(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / (x.std(-1, keepdims=True) + eps) * g + b


def ln_unbiased(x, g, b, eps):
    C = x.shape[-1]
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).sum(-1, keepdims=True) / (C - 1)
    return (x - mu) / np.sqrt(var + eps) * g + b


def ln_axis0(x, g, b, eps):
    mu, var = x.mean(0), x.var(0)
    return (x - mu) / np.sqrt(var + eps) * g + b


def ln_no_eps(x, g, b, eps):
    return (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True) * g + b


def ln_swapped(x, g, b, eps):
    xhat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return xhat * b + g


def ln_no_affine(x, g, b, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def _ln_pieces(x, eps, ddof=0):
    mu = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True, ddof=ddof) + eps)
    return (x - mu) * rstd, rstd


def lnb_factory(mean_term=True, xhat_term=True, chain_g=True, rstd_on=True, summed=True,
                swapped=False, ddof=0):
    def f(dout, x, g, eps):
        xhat, rstd = _ln_pieces(x, eps, ddof)
        dxhat = dout * g if chain_g else dout
        dx = dxhat.copy()
        if mean_term:
            dx = dx - dxhat.mean(-1, keepdims=True)
        if xhat_term:
            dx = dx - xhat * (dxhat * xhat).mean(-1, keepdims=True)
        if rstd_on:
            dx = dx * rstd
        axes = tuple(range(dout.ndim - 1))
        dg, db = ((dout * xhat).sum(axes), dout.sum(axes)) if summed else (dout * xhat, dout)
        return (dx, db, dg) if swapped else (dx, dg, db)
    return f


def gelu_fd(dout, x, erf_form=False, product=True, three=3.0, upstream=True, forward=False):
    t = np.tanh(K * (x + 0.044715 * x ** 3))
    if forward:
        return dout * x * (1 + t) / 2
    if erf_form:
        erf = np.vectorize(math.erf)
        d = 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    else:
        d = 0.5 * (1 + t)
        if product:
            d = d + 0.5 * x * (1 - t ** 2) * K * (1 + three * 0.044715 * x ** 2)
    return d * dout if upstream else d


def attn_factory(axis=-1, scale="sqrt", mask="before", upper=False):
    def f(q, k, v):
        T, hs = q.shape[-2:]
        s = q @ k.swapaxes(-1, -2)
        s = s / {"sqrt": math.sqrt(hs), "none": 1.0, "d": hs}[scale]
        m = causal(T).T if upper else causal(T)
        if mask == "before":
            s = np.where(m, s, -np.inf)
        e = np.exp(s - s.max(axis, keepdims=True))
        p = e / e.sum(axis, keepdims=True)
        if mask == "after":
            p = p * m
        return p @ v
    return f


def attnb_factory(full_jacobian=True, scale_grad=True, dk_T=True, dv_T=True, masked=True):
    def f(dy, q, k, v):
        T, hs = q.shape[-2:]
        s = q @ k.swapaxes(-1, -2) / math.sqrt(hs)
        if masked:
            s = np.where(causal(T), s, -np.inf)
        p = softmax(s)
        dv = (p.swapaxes(-1, -2) if dv_T else p) @ dy
        dp = dy @ v.swapaxes(-1, -2)
        ds = p * (dp - (p * dp).sum(-1, keepdims=True)) if full_jacobian else p * dp
        if scale_grad:
            ds = ds / math.sqrt(hs)
        return ds @ k, (ds.swapaxes(-1, -2) if dk_T else ds) @ q, dv
    return f


def ce_factory(denominator="counted", ignored_grad=False, stable=True, onehot=True, grad_div=True):
    def f(logits, targets):
        V = logits.shape[-1]
        x, t = logits.reshape(-1, V), targets.reshape(-1)
        valid = t != -100
        safe_t = np.where(valid, t, 0)
        if stable:
            p = softmax(x)
        else:
            with np.errstate(all="ignore"):
                p = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
        with np.errstate(all="ignore"):
            nll = -np.log(p[np.arange(len(t)), safe_t])
        total = np.where(valid, nll, 0).sum()
        n = {"counted": valid.sum(), "all": len(t), "one": 1}[denominator]
        g = p.copy()
        if onehot:
            g[np.arange(len(t)), safe_t] -= 1
        if not ignored_grad:
            g[~valid] = 0
        if grad_div:
            g = g / n
        return float(total / n), g.reshape(logits.shape)
    return f


PART1 = {
    "layernorm_forward": [("eps_outside_sqrt", ln_eps_outside), ("unbiased_variance", ln_unbiased),
                          ("wrong_axis", ln_axis0), ("eps_missing", ln_no_eps),
                          ("gain_bias_swapped", ln_swapped), ("affine_missing", ln_no_affine)],
    "layernorm_backward": [("mean_term_missing", lnb_factory(mean_term=False)),
                           ("xhat_term_missing", lnb_factory(xhat_term=False)),
                           ("gain_not_chained", lnb_factory(chain_g=False)),
                           ("rstd_missing", lnb_factory(rstd_on=False)),
                           ("params_not_summed", lnb_factory(summed=False)),
                           ("dg_db_swapped", lnb_factory(swapped=True)),
                           ("unbiased_variance", lnb_factory(ddof=1))],
    "gelu_backward": [("erf_derivative", lambda d, x: gelu_fd(d, x, erf_form=True)),
                      ("product_rule_missing", lambda d, x: gelu_fd(d, x, product=False)),
                      ("cubic_factor_missing", lambda d, x: gelu_fd(d, x, three=1.0)),
                      ("upstream_missing", lambda d, x: gelu_fd(d, x, upstream=False)),
                      ("forward_instead", lambda d, x: gelu_fd(d, x, forward=True))],
    "causal_attention": [("softmax_wrong_axis", attn_factory(axis=-2)),
                         ("no_scale", attn_factory(scale="none")),
                         ("scale_by_d", attn_factory(scale="d")),
                         ("mask_after_softmax", attn_factory(mask="after")),
                         ("no_mask", attn_factory(mask="none")),
                         ("mask_upper", attn_factory(upper=True))],
    "causal_attention_backward": [("softmax_jacobian_diagonal", attnb_factory(full_jacobian=False)),
                                  ("no_scale_in_backward", attnb_factory(scale_grad=False)),
                                  ("dk_transposed", attnb_factory(dk_T=False)),
                                  ("dv_transposed", attnb_factory(dv_T=False)),
                                  ("mask_ignored", attnb_factory(masked=False))],
    "cross_entropy": [("mean_over_all", ce_factory(denominator="all")),
                      ("ignored_rows_get_gradient", ce_factory(ignored_grad=True)),
                      ("no_max_subtraction", ce_factory(stable=False)),
                      ("sum_not_mean", ce_factory(denominator="one")),
                      ("onehot_missing", ce_factory(onehot=False)),
                      ("grad_not_divided", ce_factory(grad_div=False))],
}


# ====================================================================== part 2
def lora_fwd(scaling="alpha/r", swapped=False, W_T=False, bias=True, base=True):
    def f(x, W, b, A, B, lora_alpha, r):
        s = {"alpha/r": lora_alpha / r, "alpha": lora_alpha, "rs": lora_alpha / r ** 0.5,
             "r/alpha": r / lora_alpha}[scaling]
        upd = (x @ B) @ A if swapped else (x @ A.T) @ B.T
        out = s * upd
        if base:
            out = out + (x @ W.T if W_T else x @ W)
            if bias:
                out = out + b
        return out
    return f


def lora_bwd(dx_base=True, dx_lora=True, dA_T=False, dB_T=False, scaled=True, alpha_only=False):
    def f(dh, x, W, A, B, lora_alpha, r):
        s = (lora_alpha if alpha_only else lora_alpha / r) if scaled else 1.0
        dB = s * (dh.T @ (x @ A.T))
        dA = s * (B.T @ dh.T @ x)
        dx = np.zeros_like(x)
        if dx_base:
            dx = dx + dh @ W.T
        if dx_lora:
            dx = dx + s * dh @ B @ A
        return dx, (dA.T if dA_T else dA), (dB.T if dB_T else dB)
    return f


def merge(kind):
    def f(W, A, B, lora_alpha, r):
        s = {"alpha": lora_alpha, "none": 1.0}.get(kind, lora_alpha / r)
        delta = s * (B @ A if kind == "layout" else (B @ A).T)
        return {"delta": delta, "minus": W - delta}.get(kind, W + delta)
    return f


def dnorm(kind):
    def f(W, A, B, lora_alpha, r):
        s = lora_alpha if kind == "alpha" else lora_alpha / r
        delta = B @ A if kind == "layout" else A.T @ B.T
        M = W if kind == "base" else W + s * delta
        n2 = (M ** 2).sum(1 if kind == "axis" else 0)
        return n2 if kind == "squared" else np.sqrt(n2)
    return f


def dora_fwd(kind):
    def f(x, W, b, A, B, magnitude, lora_alpha, r):
        s = lora_alpha / r
        M = W + s * (B @ A).T
        col = np.linalg.norm(W if kind == "base_norm" else M, axis=1 if kind == "axis" else 0)
        if kind == "raw":
            return x @ (M * magnitude) + b
        if kind == "bias":
            return (x @ M + b) * magnitude / col
        if kind == "update_only":
            return x @ W + b + (s * x @ A.T @ B.T) * magnitude / col
        return x @ (M * (magnitude / col)) + b
    return f


def dora_bwd(kind):
    def f(dh, x, W, A, B, magnitude, lora_alpha, r):
        s = lora_alpha / r
        M = W + s * (B @ A).T
        n = np.linalg.norm(M, axis=0)
        Gw = x.T @ dh                                     # dL/dW_eff
        dM = Gw * magnitude / n
        if kind == "through_norm":                        # W_eff = m M / ‖M‖, all of it
            dM = dM - M * ((Gw * M).sum(0) * magnitude / n ** 3)
        if kind == "no_gate":
            dM = Gw
        dA = s * (dM @ B).T
        dB = s * (A @ dM).T
        dm = (Gw * M).sum(0) / (1.0 if kind == "dm_raw" else n)
        return dh @ (M * magnitude / n).T, dA, dB, dm
    return f


PART2 = {
    "lora_forward": [("alpha_not_over_r", lora_fwd(scaling="alpha")),
                     ("rslora_scaling", lora_fwd(scaling="rs")),
                     ("r_over_alpha", lora_fwd(scaling="r/alpha")),
                     ("A_B_swapped", lora_fwd(swapped=True)),
                     ("W_transposed", lora_fwd(W_T=True)),
                     ("bias_missing", lora_fwd(bias=False)),
                     ("base_missing", lora_fwd(base=False))],
    "lora_backward": [("dx_base_missing", lora_bwd(dx_base=False)),
                      ("dx_lora_missing", lora_bwd(dx_lora=False)),
                      ("dA_transposed", lora_bwd(dA_T=True)),
                      ("dB_transposed", lora_bwd(dB_T=True)),
                      ("scaling_missing", lora_bwd(scaled=False)),
                      ("alpha_not_over_r", lora_bwd(alpha_only=True))],
    "lora_merge": [("nn_linear_layout", merge("layout")), ("alpha_not_over_r", merge("alpha")),
                   ("scaling_missing", merge("none")), ("delta_only", merge("delta")),
                   ("subtracted", merge("minus"))],
    "dora_weight_norm": [("wrong_axis", dnorm("axis")), ("base_only", dnorm("base")),
                         ("squared", dnorm("squared")), ("alpha_not_over_r", dnorm("alpha")),
                         ("nn_linear_layout", dnorm("layout"))],
    "dora_forward": [("wrong_axis", dora_fwd("axis")), ("norm_of_base", dora_fwd("base_norm")),
                     ("no_normalisation", dora_fwd("raw")),
                     ("magnitude_scales_bias", dora_fwd("bias")),
                     ("magnitude_on_update_only", dora_fwd("update_only"))],
    "dora_backward": [("norm_not_detached", dora_bwd("through_norm")),
                      ("gate_missing", dora_bwd("no_gate")),
                      ("dm_not_normalised", dora_bwd("dm_raw"))],
}


# ====================================================================== part 3
def ia3_f(kind):
    def f(x, W, b, l, feedforward):
        ff = not feedforward if kind == "swap" else feedforward
        if kind == "divide":
            l = 1 / l
        if ff:
            return (x * l) @ W + b
        return (x @ W) * l + (b if kind == "bias" else b * l)
    return f


def ia3_b(kind):
    def f(dh, x, W, b, l, feedforward):
        if feedforward:
            g = dh @ W.T
            dl_rows = g * x
            dx = g if kind == "no_l" else g * l
        else:
            pre = x @ W if kind == "no_bias" else x @ W + b
            if kind == "scaled_out":
                pre = pre * l
            dl_rows = dh * pre
            dx = dh @ W.T if kind == "no_l" else (dh * l) @ W.T
        return dx, (dl_rows if kind == "rows" else dl_rows.sum(0))
    return f


def prefix_f(kind):
    def f(q, k, v, prefix_k, prefix_v):
        B, NH, T, hs = q.shape
        P = prefix_k.shape[1]
        pk = np.repeat(prefix_k[None], B, 0)
        pv = np.repeat((prefix_k if kind == "vk" else prefix_v)[None], B, 0)
        K = np.concatenate([k, pk] if kind == "after" else [pk, k], 2)
        V = np.concatenate([v, pv] if kind == "after" else [pv, v], 2)
        s = q @ K.swapaxes(-1, -2) / (1.0 if kind == "noscale" else math.sqrt(hs))
        m = np.tri(T, T + P, dtype=bool) if kind == "unshifted" else causal(T, P)
        if kind == "hidden":
            m = m.copy()
            m[:, :P] = False
        p = softmax(np.where(m, s, -np.inf))
        return p[..., P:] @ v if kind == "keys_only" else p @ V
    return f


def prompt_f(kind):
    def f(dx, num_virtual_tokens):
        P = num_virtual_tokens
        rows = dx[:, dx.shape[1] - P:] if kind == "last" else dx[:, :P]
        return {"mean": rows.mean(0), "none": rows, "first": rows[0]}.get(kind, rows.sum(0))
    return f


def relu(z):
    return np.maximum(z, 0)


def bn_f(kind):
    def f(x, a, W_down, b_down, W_up, b_up):
        inp = a if kind == "houlsby_input" else x + a
        hid = inp @ W_down.T + b_down
        if kind == "late_relu":
            ad = relu(hid @ W_up.T + b_up)
        elif kind == "linear":
            ad = hid @ W_up.T + b_up
        else:
            ad = relu(hid) @ W_up.T + b_up
        return {"no_res": ad, "lost_a": x + ad, "twice": x + x + a + ad}.get(kind, x + a + ad)
    return f


def bn_b(kind):
    def f(dy, x, a, W_down, b_down, W_up, b_up):
        h = x + a
        z = h @ W_down.T + b_down
        dd = dy @ W_up
        dz = dd if kind == "no_relu_grad" else dd * (z > 0)
        dWd, dbd = dz.T @ h, dz.sum(0)
        dWu, dbu = dy.T @ relu(z), dy.sum(0)
        dh = dz @ W_down if kind == "no_identity" else dy + dz @ W_down
        da = dy if kind == "da_identity" else dh
        if kind == "transposed":
            dWd, dWu = h.T @ dz, relu(z).T @ dy
        if kind == "unsummed":
            dbd, dbu = dz, dy
        return dh, da, dWd, dbd, dWu, dbu
    return f


PART3 = {
    "ia3_forward": [("bias_not_scaled", ia3_f("bias")), ("placement_swapped", ia3_f("swap")),
                    ("divides", ia3_f("divide"))],
    "ia3_backward": [("dl_not_summed", ia3_b("rows")), ("dl_without_bias", ia3_b("no_bias")),
                     ("dx_missing_l", ia3_b("no_l")), ("dl_from_scaled_output", ia3_b("scaled_out"))],
    "prefix_attention": [("keys_without_values", prefix_f("keys_only")),
                         ("values_from_keys", prefix_f("vk")),
                         ("mask_not_shifted", prefix_f("unshifted")),
                         ("prefix_masked", prefix_f("hidden")), ("prefix_after", prefix_f("after")),
                         ("no_scale", prefix_f("noscale"))],
    "prompt_backward": [("batch_mean", prompt_f("mean")), ("not_summed", prompt_f("none")),
                        ("first_example_only", prompt_f("first")), ("last_rows", prompt_f("last"))],
    "bottleneck_forward": [("residual_missing", bn_f("no_res")), ("sublayer_lost", bn_f("lost_a")),
                           ("adapter_on_sublayer_only", bn_f("houlsby_input")),
                           ("relu_after_up", bn_f("late_relu")), ("no_relu", bn_f("linear")),
                           ("x_added_twice", bn_f("twice"))],
    "bottleneck_backward": [("relu_derivative_missing", bn_b("no_relu_grad")),
                            ("residual_gradient_missing", bn_b("no_identity")),
                            ("weight_gradient_transposed", bn_b("transposed")),
                            ("bias_gradient_not_summed", bn_b("unsummed")),
                            ("sublayer_gradient_identity_only", bn_b("da_identity"))],
}


# ====================================================================== part 4
def adam(kind):
    def f(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
        if kind == "l2":
            grad = grad + weight_decay * param
        elif kind == "no_lr_decay":
            param = param - weight_decay * param
        elif kind != "late_decay":
            param = param - lr * weight_decay * param
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        m_hat = m if kind == "no_bc" else m / (1 - beta1 ** t)
        v_hat = v if kind in ("no_bc", "bc_m") else v / (1 - beta2 ** t)
        step = m_hat / (np.sqrt(v_hat + eps) if kind == "eps_in" else np.sqrt(v_hat) + eps)
        param = param - lr * step
        if kind == "late_decay":
            param = param - lr * weight_decay * param
        return param, m, v
    return f


def counts(kind):
    def f(method, n_layer=12, n_embd=768, vocab_size=50257, n_positions=1024, r=8,
          num_virtual_tokens=20, reduction_factor=16):
        L, C, P, V = n_layer, n_embd, num_virtual_tokens, vocab_size
        m = C // reduction_factor
        qkv = C if kind == "one_c_attn" else 3 * C
        block = 4 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
        full = V * C + n_positions * C + L * block + 2 * C
        if kind == "lm_head":
            full += V * C
        if kind == "no_wpe":
            full -= n_positions * C
        adapter = 2 * C * m + (0 if kind == "no_bias" else m + C)
        return {"full": full,
                "lora": L * r * (C + qkv),
                "dora": L * (r * (C + qkv) + (0 if kind == "no_mag" else qkv)),
                "ia3": L * (qkv + 4 * C),
                "prefix": P * L * C * (1 if kind == "keys" else 2),
                "prompt": P * C * (L if kind == "per_layer" else 1),
                "pfeiffer": L * adapter,
                "houlsby": L * adapter * (1 if kind == "one_houlsby" else 2)}[method]
    return f


def loop(kind):
    from minipeft.train.optim import AdamW

    def f(model, batches, steps, lr):
        params = model.trainable_parameters()
        opt = AdamW(params, lr=lr) if kind == "default_wd" else AdamW(params, lr=lr, weight_decay=0.0)
        losses = []
        for t in range(steps):
            ids, labels = batches[0 if kind == "first" else t % len(batches)]
            loss, grads = model.loss_and_grads(ids, labels)
            if kind == "fresh_opt":
                opt = AdamW(params, lr=lr, weight_decay=0.0)
            if kind == "ascent":
                for name in grads:
                    grads[name] = -grads[name]
            if kind == "sgd":
                for name, g in grads.items():
                    params[name] -= lr * g
            elif kind != "no_step":
                opt.step(grads)
            losses.append(model.loss(ids, labels) if kind == "after" else loss)
        return losses
    return f


PART4 = {
    "adamw_step": [("l2_not_decoupled", adam("l2")), ("no_bias_correction", adam("no_bc")),
                   ("bias_correction_m_only", adam("bc_m")), ("eps_inside_sqrt", adam("eps_in")),
                   ("decay_without_lr", adam("no_lr_decay")), ("decay_after_update", adam("late_decay"))],
    "count_trainable": [("c_attn_as_one", counts("one_c_attn")), ("lm_head_counted", counts("lm_head")),
                        ("wpe_forgotten", counts("no_wpe")), ("dora_magnitude_missing", counts("no_mag")),
                        ("prefix_keys_only", counts("keys")), ("prompt_per_layer", counts("per_layer")),
                        ("houlsby_one_adapter", counts("one_houlsby")),
                        ("adapter_biases_missing", counts("no_bias"))],
    "train_loop": [("no_optimizer_step", loop("no_step")), ("gradient_ascent", loop("ascent")),
                   ("loss_after_step", loop("after")), ("new_optimizer_each_step", loop("fresh_opt")),
                   ("weight_decay_default", loop("default_wd")), ("first_batch_only", loop("first")),
                   ("sgd_instead", loop("sgd"))],
}

WRONG = {**PART1, **PART2, **PART3, **PART4}
CASES = [(name, key, fn) for name, rows in WRONG.items() for key, fn in rows]


# ====================================================================== the tests
def test_the_registry_covers_the_course():
    assert len(EXERCISES) >= 14
    for needed in ("layernorm_forward", "layernorm_backward", "gelu_backward",
                   "causal_attention_backward", "cross_entropy", "lora_forward", "lora_backward",
                   "lora_merge", "dora_weight_norm", "dora_forward", "ia3_forward", "ia3_backward",
                   "prefix_attention", "prompt_backward", "bottleneck_forward",
                   "bottleneck_backward", "adamw_step", "count_trainable", "train_loop"):
        assert needed in EXERCISES
    numbers = [ex.number for ex in EXERCISES.values()]
    assert len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("name", list(EXERCISES))
def test_the_reference_passes_its_check(name, capsys):
    ex = EXERCISES[name]
    v = ex.check(ex.reference)
    assert v.passed is True, v.message
    out = capsys.readouterr().out
    assert out.startswith(f"[PASS] Exercise {ex.number} {name}")
    if ex.finite_differences is not None:
        assert "finite differences agree" in out
    if ex.with_torch is not None:                      # torch is in the test extra
        assert "agrees (" in out.split("finite differences agree")[-1]


def test_every_misconception_has_a_wrong_implementation_here():
    for name, ex in EXERCISES.items():
        assert {k for k, _ in WRONG.get(name, [])} == {m.key for m in ex.misconceptions}, name


@pytest.mark.parametrize("name,key,fn", CASES, ids=[f"{n}-{k}" for n, k, _ in CASES])
def test_a_misconception_fails_with_its_own_hint(name, key, fn):
    ex = EXERCISES[name]
    with np.errstate(all="ignore"):
        v = ex.check(fn)
    assert v.passed is False, v.message
    assert v.misconception == key, v.message
    assert ex.hint(key) in v.message and v.message.startswith("[FAIL]")


def test_hints_are_distinct_and_give_no_code_away():
    for ex in EXERCISES.values():
        hints = [m.hint for m in ex.misconceptions]
        assert len(set(hints)) == len(hints), ex.name
        for h in hints:
            for code in ("np.", "return ", " @ ", ".sum(", ".T", "**", "axis="):
                assert code not in h, (ex.name, h)


def _perturbed(ex, how):
    def f(*args):
        out = ex.reference(*args)
        outs = list(out) if len(ex.outputs) > 1 else [out]
        if how == "scale":
            outs[0] = np.asarray(outs[0]) * 1.01
        else:                                              # a gradient off by a transpose
            j = next((i for i, o in enumerate(outs) if np.ndim(o) >= 2), None)
            if j is None:
                outs[-1] = np.asarray(outs[-1])[::-1]
            else:
                outs[j] = np.swapaxes(np.asarray(outs[j]), -1, -2)
        return tuple(outs) if len(ex.outputs) > 1 else outs[0]
    return f


@pytest.mark.parametrize("name", [n for n in EXERCISES if n != "train_loop"])
def test_a_perturbed_reference_fails(name):
    ex = EXERCISES[name]
    assert ex.check(_perturbed(ex, "scale")).passed is False
    if len(ex.outputs) > 1 and name.endswith("backward"):
        assert ex.check(_perturbed(ex, "transpose")).passed is False


def test_a_training_loop_that_scales_its_losses_fails():
    ex = EXERCISES["train_loop"]
    assert ex.check(lambda *a: [x * 1.01 for x in ex.reference(*a)]).passed is False


def test_memorising_the_first_case_or_float32_cannot_pass():
    ex = EXERCISES["layernorm_forward"]
    first = ex.cases(np.random.default_rng(0))[0]
    memo = ex.reference(*(first[a] for a in ex.args))
    v = ex.check(lambda x, g, b, eps: memo if x.shape == memo.shape else memo[..., :1])
    assert v.passed is False
    v = ex.check(lambda x, g, b, eps: ex.reference(x, g, b, eps).astype(np.float32))
    assert v.passed is False and "float32" in v.message
    count = EXERCISES["count_trainable"]
    hard = {m: count.reference(m, 12, 768, 50257, 1024, 8, 20, 16) for m in
            ("full", "lora", "dora", "ia3", "prefix", "prompt", "pfeiffer", "houlsby")}
    assert count.check(lambda method, *rest: hard[method]).passed is False   # other shapes


def test_not_attempted_exception_signature_and_structure(capsys):
    ex = EXERCISES["lora_forward"]

    def todo(x, W, b, A, B, lora_alpha, r):
        raise NotImplementedError("Exercise 2.1: LoRA forward")
    v = ex.check(todo)
    assert v.passed is None and v.status == "not attempted" and "[NOT ATTEMPTED]" in v.message

    def buggy(x, W, b, A, B, lora_alpha, r):
        s = lora_alpha / r
        return x @ W + b + s * x @ A @ B                   # a layout error: shapes do not fit
    v = ex.check(buggy)
    assert v.passed is False and "ValueError" in v.message and "Traceback" not in v.message
    assert "in buggy, line" in v.message and "Hint: A shape error" in v.message

    def zero_div(x, W, b, A, B, lora_alpha, r):
        return 1 / 0
    v = ex.check(zero_div)
    assert v.passed is False and "ZeroDivisionError" in v.message and "Hint" not in v.message

    v = ex.check(lambda x, W: x)
    assert v.passed is False and "takes (x, W)" in v.message
    v = EXERCISES["lora_backward"].check(lambda dh, x, W, A, B, lora_alpha, r: dh)
    assert v.passed is False and "should return 3" in v.message
    v = ex.check(None)
    assert v.passed is False
    capsys.readouterr()


def test_strict_and_the_environment_make_a_check_raise(monkeypatch):
    ex = EXERCISES["prompt_backward"]

    def todo(dx, num_virtual_tokens):
        raise NotImplementedError
    assert ex.check(todo).passed is None                   # never raises by default
    with pytest.raises(ExerciseFailed, match="NOT ATTEMPTED"):
        ex.check(todo, strict=True)
    monkeypatch.setenv("MINIPEFT_STRICT", "1")
    with pytest.raises(ExerciseFailed, match="Hint"):
        ex.check(lambda dx, n: dx[:, :n].mean(0))
    assert ex.check(ex.reference).passed is True            # a pass never raises


def test_a_verdict_is_recorded_when_asked(tmp_path, monkeypatch):
    rec = tmp_path / "verdicts.jsonl"
    monkeypatch.setenv("MINIPEFT_EXERCISES_RECORD", str(rec))
    check("gelu_backward", EXERCISES["gelu_backward"].reference)
    check("gelu_backward", lambda dout, x: dout)
    rows = [json.loads(line) for line in rec.read_text().splitlines()]
    assert [(r["exercise"], r["status"]) for r in rows] == [("gelu_backward", "passed"),
                                                            ("gelu_backward", "failed")]
    from minipeft.errors import MinipeftError
    with pytest.raises(MinipeftError, match="no exercise named"):
        check("layernorm", print)


# ====================================================================== the notebooks
def _run_in_process(path: Path, monkeypatch, tmp_path):
    """Execute a notebook's code cells in this process (the kernel-based run is
    tests/test_notebooks.py's); -> the recorded verdicts."""
    import nbformat
    rec = tmp_path / f"{path.parent.name}-{path.stem}.jsonl"
    monkeypatch.setenv("MINIPEFT_EXERCISES_RECORD", str(rec))
    monkeypatch.setenv("MINIPEFT_FAST", "1")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, str(path), "exec"), namespace)
    return [json.loads(line) for line in rec.read_text().splitlines()] if rec.exists() else []


SOURCES = sorted((ROOT / "notebooks" / "src" / "exercises").glob("*.py"))


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_student_notebook_is_all_not_attempted_and_solution_all_passed(source, monkeypatch,
                                                                       tmp_path, capsys):
    student = _run_in_process(ROOT / "notebooks" / "exercises" / f"{source.stem}.ipynb",
                              monkeypatch, tmp_path)
    solution = _run_in_process(ROOT / "notebooks" / "solutions" / f"{source.stem}.ipynb",
                               monkeypatch, tmp_path)
    named = [line.split('"')[1] for line in source.read_text().splitlines()
             if line.startswith("check(") or "= check(" in line]
    assert named and [r["exercise"] for r in student] == named
    assert [r["exercise"] for r in solution] == named
    assert {r["status"] for r in student} == {"not attempted"}, student
    assert {r["status"] for r in solution} == {"passed"}, [r["message"] for r in solution]
    capsys.readouterr()


def test_every_exercise_is_in_a_notebook():
    text = "".join(s.read_text() for s in SOURCES)
    for name, ex in EXERCISES.items():
        assert f'check("{name}"' in text, name
        assert f"### BEGIN SOLUTION  Exercise {ex.number}:" in text, name


def test_the_readme_lists_every_exercise_with_its_count():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## For teachers" in text
    for name, ex in EXERCISES.items():
        count = f"{len(ex.misconceptions)}" + (" + shape errors" if ex.on_exception else "")
        assert f"| {ex.number} | `{name}` | {ex.title} | {count} |" in text, name
    total = sum(len(ex.misconceptions) for ex in EXERCISES.values())
    assert f"The {total} mistakes include" in text


def test_the_readme_verdict_is_what_a_check_prints(capsys):
    def eps_outside(x, g, b, eps):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / (x.std(-1, keepdims=True) + eps) * g + b
    EXERCISES["layernorm_forward"].check(eps_outside)
    printed = capsys.readouterr().out.strip()
    assert printed in (ROOT / "README.md").read_text(encoding="utf-8")


def test_two_mistakes_at_once_get_a_hint_each(capsys):
    def two(dout, x, g, eps):                  # the mean's term missing, and dg / db swapped
        dx, dg, db = lnb_factory(mean_term=False)(dout, x, g, eps)
        return dx, db, dg
    ex = EXERCISES["layernorm_backward"]
    v = ex.check(two)
    assert v.passed is False
    assert f"Hint for dx: {ex.hint('mean_term_missing')}" in v.message
    assert f"Hint for dg, db: {ex.hint('dg_db_swapped')}" in v.message
    assert "dg differs too" in v.message


def test_a_failing_reference_is_not_blamed_on_the_student(monkeypatch):
    ex = EXERCISES["gelu_backward"]
    student = ex.reference

    def broken(dout, x):
        raise RuntimeError("a bug in the package")
    monkeypatch.setattr(ex, "reference", broken)
    v = ex.check(student)
    assert v.passed is False and "[ERROR]" in v.message and "not your mistake" in v.message
