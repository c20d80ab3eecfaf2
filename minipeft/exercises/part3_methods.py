"""Part 3 — the other methods: IA3, prefix tuning, prompt tuning, bottleneck adapters.

References: ``minipeft.peft.ia3``, ``prefix``, ``prompt``, ``bottleneck`` and the ops,
wrapped to the student's signatures.
"""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..peft import bottleneck, ia3, prompt
from ..peft.bottleneck_config import BottleneckConfig
from .core import Exercise, Misconception, fd_errors, shape_error_hint, torch_errors
from .part1_ops import _softmax

# ------------------------------------------------------------------ 3.1 IA3 forward


def _ia3_ref(x, W, b, l, feedforward):
    if feedforward:                                         # h = (x ⊙ l) W + b
        u, _ = ia3.ia3_forward(x, l)
        return ops.linear_forward(u, W, b)[0]
    h, _ = ops.linear_forward(x, W, b)                      # h = (x W + b) ⊙ l
    return ia3.ia3_forward(h, l)[0]


def _ia3_wrong(kind):
    def wrong(x, W, b, l, feedforward):
        ff = (not feedforward) if kind == "placement_swapped" else feedforward
        if kind == "divides":
            return (x / l) @ W + b if ff else (x @ W + b) / l
        if ff:
            return (x * l) @ W + b
        if kind == "bias_not_scaled":
            return (x @ W) * l + b
        return (x @ W + b) * l
    return wrong


def _ia3_case(rng, n_in, n_out, ff, N=5):
    return {"x": rng.standard_normal((N, n_in)), "W": rng.standard_normal((n_in, n_out)),
            "b": rng.standard_normal(n_out) + 1.0,
            "l": rng.standard_normal(n_in if ff else n_out) * 0.5 + 1.0, "feedforward": ff}


def _ia3_cases(rng):
    """Square layers first (a placement mistake still runs there), then c_attn (output
    scaling, out = 3·in) and mlp.c_proj (input scaling, in = 4·out)."""
    return [_ia3_case(rng, 6, 6, False), _ia3_case(rng, 6, 6, True),
            _ia3_case(rng, 4, 12, False), _ia3_case(rng, 16, 4, True)]


def _ia3_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    errs = []
    for c in _ia3_cases(rng)[2:]:
        h = fn(*(c[a].copy() if isinstance(c[a], np.ndarray) else c[a] for a in IA3_FORWARD.args))
        t = {k: torch.tensor(v) for k, v in c.items() if isinstance(v, np.ndarray)}
        th = (t["x"] * t["l"]) @ t["W"] + t["b"] if c["feedforward"] else (t["x"] @ t["W"] + t["b"]) * t["l"]
        errs += torch_errors({f"h (feedforward={c['feedforward']})": (h, th)})
    return "torch", errs


IA3_HINT = ("A shape error: l has one entry per output for output scaling (feedforward=False) "
            "and one per input for input scaling (feedforward=True). Which side does each scale?")

IA3_FORWARD = Exercise(
    "3.1", "ia3_forward", "IA3 on a Conv1D layer, forward (output and input scaling)",
    args=("x", "W", "b", "l", "feedforward"), outputs=("h",), reference=_ia3_ref,
    cases=_ia3_cases,
    misconceptions=[
        Misconception("bias_not_scaled", "Output scaling multiplies the layer's whole output: "
                      "is the bias part of that output?", _ia3_wrong("bias_not_scaled")),
        Misconception("placement_swapped", "Which placement scales the input (feedforward=True) "
                      "and which the output (feedforward=False)?", _ia3_wrong("placement_swapped")),
        Misconception("divides", "IA3 rescales activations by l: multiply or divide?",
                      _ia3_wrong("divides")),
    ],
    on_exception=shape_error_hint(IA3_HINT), with_torch=_ia3_torch)

# ------------------------------------------------------------------ 3.2 IA3 backward


def _ia3b_ref(dh, x, W, b, l, feedforward):
    if feedforward:
        u, _ = ia3.ia3_forward(x, l)
        du, _, _ = ops.linear_backward(dh, u, W, need_params=False)
        dx, dl = ia3.ia3_backward(du, x, l)
        return dx, dl
    h, _ = ops.linear_forward(x, W, b)
    dh0, dl = ia3.ia3_backward(dh, h, l)
    dx, _, _ = ops.linear_backward(dh0, x, W, need_params=False)
    return dx, dl


def _ia3b_wrong(kind):
    def wrong(dh, x, W, b, l, feedforward):
        if feedforward:
            du = dh @ W.T
            dx = du if kind == "dx_missing_l" else du * l
            per_row = du * x
        else:
            h0 = x @ W + (0 if kind == "dl_without_bias" else b)
            dx = (dh if kind == "dx_missing_l" else dh * l) @ W.T
            per_row = dh * (h0 * l if kind == "dl_from_scaled_output" else h0)
        dl = per_row if kind == "dl_not_summed" else per_row.sum(0)
        return dx, dl
    return wrong


def _ia3b_cases(rng):
    out = []
    for c in _ia3_cases(rng):
        c = dict(c)
        c["dh"] = rng.standard_normal((c["x"].shape[0], c["W"].shape[1]))
        out.append(c)
    return out


def _ia3b_fd(fn, rng):
    errs = []
    for c in _ia3b_cases(rng)[2:]:
        x, W, b, l, ff, dh = (c[k] for k in ("x", "W", "b", "l", "feedforward", "dh"))
        dx, dl = fn(dh.copy(), x.copy(), W.copy(), b.copy(), l.copy(), ff)
        errs += fd_errors(lambda: float(np.sum(_ia3_ref(x, W, b, l, ff) * dh)),
                          {"dx": x, "dl": l}, {"dx": dx, "dl": dl})
    return errs


def _ia3b_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    errs = []
    for c in _ia3b_cases(rng)[2:]:
        dx, dl = fn(*(c[a].copy() if isinstance(c[a], np.ndarray) else c[a] for a in IA3_BACKWARD.args))
        t = {k: torch.tensor(v, requires_grad=k in ("x", "l")) for k, v in c.items()
             if isinstance(v, np.ndarray)}
        h = (t["x"] * t["l"]) @ t["W"] + t["b"] if c["feedforward"] else (t["x"] @ t["W"] + t["b"]) * t["l"]
        h.backward(t["dh"])
        ff = c["feedforward"]
        errs += torch_errors({f"dx (feedforward={ff})": (dx, t["x"].grad),
                              f"dl (feedforward={ff})": (dl, t["l"].grad)})
    return "torch autograd", errs


IA3_BACKWARD = Exercise(
    "3.2", "ia3_backward", "IA3 on a Conv1D layer, backward (both placements)",
    args=("dh", "x", "W", "b", "l", "feedforward"), outputs=("dx", "dl"), reference=_ia3b_ref,
    cases=_ia3b_cases,
    misconceptions=[
        Misconception("dl_not_summed", "l is shared by every token: how do the tokens' "
                      "gradients combine into one of l's shape?", _ia3b_wrong("dl_not_summed")),
        Misconception("dl_without_bias", "With output scaling, what exactly does l multiply? "
                      "Is the bias part of it?", _ia3b_wrong("dl_without_bias")),
        Misconception("dx_missing_l", "x reaches the output through l as well as W: does your "
                      "dx carry l's factor?", _ia3b_wrong("dx_missing_l")),
        Misconception("dl_from_scaled_output", "dl is the upstream gradient times what l "
                      "multiplies: the output before the scaling, or after it?",
                      _ia3b_wrong("dl_from_scaled_output")),
    ],
    on_exception=shape_error_hint(IA3_HINT), finite_differences=_ia3b_fd, with_torch=_ia3b_torch)

# ------------------------------------------------------------------ 3.3 prefix attention


def _prefix_ref(q, k, v, prefix_k, prefix_v):
    B = q.shape[0]
    pk = np.broadcast_to(prefix_k, (B,) + prefix_k.shape)
    pv = np.broadcast_to(prefix_v, (B,) + prefix_v.shape)
    K, V = np.concatenate([pk, k], axis=2), np.concatenate([pv, v], axis=2)
    allowed = ops.attention_mask_allowed(q.shape[2], K.shape[2])
    return ops.attention_forward(q, K, V, allowed)[0]


def _prefix_wrong(kind):
    def wrong(q, k, v, prefix_k, prefix_v):
        B, NH, T, hs = q.shape
        P = prefix_k.shape[1]
        pk = np.broadcast_to(prefix_k, (B, NH, P, hs))
        pv = np.broadcast_to(prefix_k if kind == "values_from_keys" else prefix_v, (B, NH, P, hs))
        if kind == "prefix_after":
            K, V = np.concatenate([k, pk], 2), np.concatenate([v, pv], 2)
        else:
            K, V = np.concatenate([pk, k], 2), np.concatenate([pv, v], 2)
        s = q @ np.swapaxes(K, -1, -2)
        if kind != "no_scale":
            s = s / math.sqrt(hs)
        allowed = np.tri(T, P + T, k=P, dtype=bool)
        if kind == "mask_not_shifted":
            allowed = np.tri(T, P + T, k=0, dtype=bool)
        if kind == "prefix_masked":
            allowed = allowed & (np.arange(P + T) >= P)
        p = _softmax(np.where(allowed, s, -np.inf))
        if kind == "keys_without_values":
            return p[..., P:] @ v
        return p @ V
    return wrong


def _prefix_case(rng, B, NH, T, hs, P):
    c = {n: rng.standard_normal((B, NH, T, hs)) for n in ("q", "k", "v")}
    c["prefix_k"] = rng.standard_normal((NH, P, hs))
    c["prefix_v"] = rng.standard_normal((NH, P, hs))
    return c


def _prefix_cases(rng):
    return [_prefix_case(rng, 1, 2, 5, 4, 3), _prefix_case(rng, 2, 3, 4, 8, 6),
            _prefix_case(rng, 2, 1, 1, 4, 2)]


def _prefix_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _prefix_cases(rng)[1]
    y = fn(*(c[a].copy() for a in PREFIX_ATTENTION.args))
    B = c["q"].shape[0]
    t = {k: torch.tensor(v) for k, v in c.items()}
    K = torch.cat([t["prefix_k"].expand(B, -1, -1, -1), t["k"]], 2)
    V = torch.cat([t["prefix_v"].expand(B, -1, -1, -1), t["v"]], 2)
    T, P = c["q"].shape[2], c["prefix_k"].shape[1]
    mask = torch.ones(T, P + T, dtype=torch.bool).tril(diagonal=P)
    ty = torch.nn.functional.scaled_dot_product_attention(t["q"], K, V, attn_mask=mask)
    return "torch scaled_dot_product_attention with the prefix mask", torch_errors({"y": (y, ty)})


PREFIX_ATTENTION = Exercise(
    "3.3", "prefix_attention", "prefix tuning: attention with P prefix keys and values",
    args=("q", "k", "v", "prefix_k", "prefix_v"), outputs=("y",), reference=_prefix_ref,
    cases=_prefix_cases,
    misconceptions=[
        Misconception("keys_without_values", "A prefix slot is a key *and* a value: when a "
                      "query attends to a prefix key, what does it read?",
                      _prefix_wrong("keys_without_values")),
        Misconception("values_from_keys", "Which tensor holds the prefix's values?",
                      _prefix_wrong("values_from_keys")),
        Misconception("mask_not_shifted", "With P prefix slots in front, which keys may query t "
                      "see? Does the causal triangle move?", _prefix_wrong("mask_not_shifted")),
        Misconception("prefix_masked", "Every prefix slot is visible to every token: does your "
                      "mask let the prefix through?", _prefix_wrong("prefix_masked")),
        Misconception("prefix_after", "Where does the prefix go: before the tokens' keys, or "
                      "after them?", _prefix_wrong("prefix_after")),
        Misconception("no_scale", "The scores still need their scaling by the head size: is it "
                      "there?", _prefix_wrong("no_scale")),
    ],
    with_torch=_prefix_torch)

# ------------------------------------------------------------------ 3.4 prompt backward


def _prompt_ref(dx, num_virtual_tokens):
    return prompt.prompt_embedding_backward(dx, prompt.PromptCache(num_virtual_tokens))


def _prompt_wrong(kind):
    def wrong(dx, num_virtual_tokens):
        P = num_virtual_tokens
        rows = dx[:, -P:] if kind == "last_rows" else dx[:, :P]
        return {"batch_mean": rows.mean(0), "not_summed": rows, "first_example_only": rows[0],
                "last_rows": rows.sum(0)}.get(kind, rows.sum(0))
    return wrong


def _prompt_cases(rng):
    return [{"dx": rng.standard_normal((3, 7, 5)), "num_virtual_tokens": 3},
            {"dx": rng.standard_normal((2, 10, 8)), "num_virtual_tokens": 4},
            {"dx": rng.standard_normal((4, 3, 6)), "num_virtual_tokens": 1}]


def _prompt_fd(fn, rng):
    B, P, T, C, V = 2, 3, 4, 5, 11
    ids = rng.integers(0, V, (B, T))
    wte, wpe = rng.standard_normal((V, C)), rng.standard_normal((P + T, C))
    soft = rng.standard_normal((P, C))
    pos = prompt.prompt_positions(P, np.arange(T)[None])
    dx = rng.standard_normal((B, P + T, C))
    dp = fn(dx.copy(), P)
    return fd_errors(lambda: float(np.sum(prompt.prompt_embedding_forward(ids, soft, wte, wpe, pos)[0] * dx)),
                     {"dprompt": soft}, {"dprompt": dp})


def _prompt_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _prompt_cases(rng)[1]
    P = c["num_virtual_tokens"]
    B, T, C = c["dx"].shape
    dp = fn(c["dx"].copy(), P)
    soft = torch.zeros(P, C, dtype=torch.float64, requires_grad=True)
    rest = torch.zeros(B, T - P, C, dtype=torch.float64)
    x = torch.cat([soft.expand(B, -1, -1), rest], 1)
    x.backward(torch.tensor(c["dx"]))
    return "torch autograd of cat(prompt.expand(B), tokens)", torch_errors({"dprompt": (dp, soft.grad)})


PROMPT_BACKWARD = Exercise(
    "3.4", "prompt_backward", "prompt tuning: the gradient of the soft prompt",
    args=("dx", "num_virtual_tokens"), outputs=("dprompt",), reference=_prompt_ref,
    cases=_prompt_cases,
    misconceptions=[
        Misconception("batch_mean", "The same prompt is used by every sequence of the batch: do "
                      "their gradients average, or add up?", _prompt_wrong("batch_mean")),
        Misconception("not_summed", "The prompt is one (P, C) tensor shared by the batch: what "
                      "shape must its gradient have?", _prompt_wrong("not_summed")),
        Misconception("first_example_only", "Every sequence of the batch reads the prompt: is "
                      "every sequence's gradient in yours?", _prompt_wrong("first_example_only")),
        Misconception("last_rows", "Where do the virtual tokens sit in the sequence: in front of "
                      "the real tokens, or after them?", _prompt_wrong("last_rows")),
    ],
    finite_differences=_prompt_fd, with_torch=_prompt_torch)

# ------------------------------------------------------------------ 3.5/3.6 bottleneck adapter
_PFEIFFER = BottleneckConfig(preset="pfeiffer", non_linearity="relu")


def _tensors(W_down, b_down, W_up, b_up):
    return {"adapter_down.0.weight": W_down, "adapter_down.0.bias": b_down,
            "adapter_up.weight": W_up, "adapter_up.bias": b_up}


def _bn_ref(x, a, W_down, b_down, W_up, b_up):
    return bottleneck.adapter_forward(x, a, _tensors(W_down, b_down, W_up, b_up), _PFEIFFER,
                                      ops=bottleneck)[0]


def _bn_wrong(kind):
    def wrong(x, a, W_down, b_down, W_up, b_up):
        z = a if kind == "adapter_on_sublayer_only" else x + a
        hdn = z @ W_down.T + b_down
        if kind == "relu_after_up":
            f = np.maximum(hdn @ W_up.T + b_up, 0)
        elif kind == "no_relu":
            f = hdn @ W_up.T + b_up
        else:
            f = np.maximum(hdn, 0) @ W_up.T + b_up
        return {"residual_missing": f, "sublayer_lost": x + f,
                "x_added_twice": 2 * x + a + f}.get(kind, x + a + f)
    return wrong


def _bn_case(rng, N, C, m):
    return {"x": rng.standard_normal((N, C)), "a": rng.standard_normal((N, C)),
            "W_down": rng.standard_normal((m, C)) * 0.5, "b_down": rng.standard_normal(m) * 0.5,
            "W_up": rng.standard_normal((C, m)) * 0.5, "b_up": rng.standard_normal(C) * 0.5}


def _bn_cases(rng):
    return [_bn_case(rng, 5, 8, 2), _bn_case(rng, 7, 12, 3), _bn_case(rng, 3, 16, 1)]


BN_HINT = ("A shape error: the adapter's weights keep nn.Linear's [out, in] layout "
           "(W_down (m, C), W_up (C, m)). How does a row vector meet such a weight?")


def _bn_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _bn_cases(rng)[1]
    y = fn(*(c[a].copy() for a in BOTTLENECK_FORWARD.args))
    t = {k: torch.tensor(v) for k, v in c.items()}
    h = t["x"] + t["a"]
    f = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(h, t["W_down"], t["b_down"])),
                                   t["W_up"], t["b_up"])
    return "torch (nn.functional.linear, relu)", torch_errors({"y": (y, h + f)})


BOTTLENECK_FORWARD = Exercise(
    "3.5", "bottleneck_forward", "a bottleneck adapter (Pfeiffer, relu) after GPT-2's MLP, forward",
    args=("x", "a", "W_down", "b_down", "W_up", "b_up"), outputs=("y",), reference=_bn_ref,
    cases=_bn_cases,
    misconceptions=[
        Misconception("residual_missing", "The adapter adds a small correction to the residual "
                      "stream: where is the stream in your output?", _bn_wrong("residual_missing")),
        Misconception("sublayer_lost", "The block's output is x plus the MLP's output plus the "
                      "adapter's: is the MLP's output (a) still in it?", _bn_wrong("sublayer_lost")),
        Misconception("adapter_on_sublayer_only", "What does the Pfeiffer adapter read: the MLP's "
                      "output alone (Houlsby's input), or the stream after the residual addition?",
                      _bn_wrong("adapter_on_sublayer_only")),
        Misconception("relu_after_up", "Where is the non-linearity: inside the bottleneck, or "
                      "after the up-projection?", _bn_wrong("relu_after_up")),
        Misconception("no_relu", "Without its non-linearity the adapter is one linear map: "
                      "where is the relu?", _bn_wrong("no_relu")),
        Misconception("x_added_twice", "Count how many times the residual stream x appears in "
                      "your output.", _bn_wrong("x_added_twice")),
    ],
    on_exception=shape_error_hint(BN_HINT), with_torch=_bn_torch)


def _bnb_ref(dy, x, a, W_down, b_down, W_up, b_up):
    t = _tensors(W_down, b_down, W_up, b_up)
    _, cache = bottleneck.adapter_forward(x, a, t, _PFEIFFER, ops=bottleneck)
    dx, da, g = bottleneck.adapter_backward(dy, cache, t, _PFEIFFER, ops=bottleneck)
    return (dx, da, g["adapter_down.0.weight"], g["adapter_down.0.bias"], g["adapter_up.weight"],
            g["adapter_up.bias"])


def _bnb_wrong(kind):
    def wrong(dy, x, a, W_down, b_down, W_up, b_up):
        z = x + a
        pre = z @ W_down.T + b_down
        d = np.maximum(pre, 0)
        dW_up, db_up = dy.T @ d, dy.sum(0)
        dd = dy @ W_up
        dpre = dd if kind == "relu_derivative_missing" else dd * (pre > 0)
        dW_down, db_down = dpre.T @ z, dpre.sum(0)
        dz = dpre @ W_down
        dx = dz if kind == "residual_gradient_missing" else dy + dz
        da = dx
        if kind == "weight_gradient_transposed":
            dW_down, dW_up = dW_down.T, dW_up.T
        if kind == "bias_gradient_not_summed":
            db_down, db_up = dpre, dy
        if kind == "sublayer_gradient_identity_only":
            da = dy
        return dx, da, dW_down, db_down, dW_up, db_up
    return wrong


def _bnb_cases(rng):
    out = []
    for c in _bn_cases(rng):
        c = dict(c)
        c["dy"] = rng.standard_normal(c["x"].shape)
        out.append(c)
    return out


def _bnb_fd(fn, rng):
    c = _bn_case(rng, 3, 5, 2)
    dy = rng.standard_normal((3, 5))
    got = fn(dy.copy(), *(c[a].copy() for a in BOTTLENECK_FORWARD.args))
    names = BOTTLENECK_BACKWARD.outputs
    wrt = dict(zip(names, (c[a] for a in BOTTLENECK_FORWARD.args)))
    return fd_errors(lambda: float(np.sum(_bn_ref(**c) * dy)), wrt, dict(zip(names, got)))


def _bnb_torch(fn, rng):
    import torch  # optional: the torch reference runs only where it is installed
    c = _bnb_cases(rng)[1]
    got = fn(*(c[a].copy() for a in BOTTLENECK_BACKWARD.args))
    t = {k: torch.tensor(v, requires_grad=k != "dy") for k, v in c.items()}
    h = t["x"] + t["a"]
    y = h + torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(h, t["W_down"], t["b_down"])),
                                       t["W_up"], t["b_up"])
    y.backward(t["dy"])
    return "torch autograd", torch_errors({n: (g, t[a].grad) for n, g, a in
                                           zip(BOTTLENECK_BACKWARD.outputs, got, BOTTLENECK_FORWARD.args)})


BOTTLENECK_BACKWARD = Exercise(
    "3.6", "bottleneck_backward", "a bottleneck adapter (Pfeiffer, relu), backward",
    args=("dy", "x", "a", "W_down", "b_down", "W_up", "b_up"),
    outputs=("dx", "da", "dW_down", "db_down", "dW_up", "db_up"), reference=_bnb_ref,
    cases=_bnb_cases,
    misconceptions=[
        Misconception("relu_derivative_missing", "What does the relu do to the gradient where "
                      "its input was negative?", _bnb_wrong("relu_derivative_missing")),
        Misconception("residual_gradient_missing", "The output contains x + a itself, not only "
                      "the adapter of it: what does that identity path send back?",
                      _bnb_wrong("residual_gradient_missing")),
        Misconception("weight_gradient_transposed", "A gradient has the shape of its parameter: "
                      "W_down is (m, C) and W_up is (C, m).", _bnb_wrong("weight_gradient_transposed")),
        Misconception("bias_gradient_not_summed", "A bias is shared by every token: how do the "
                      "tokens' gradients combine?", _bnb_wrong("bias_gradient_not_summed")),
        Misconception("sublayer_gradient_identity_only", "a enters the adapter as well as the "
                      "residual: does da have a term through the adapter?",
                      _bnb_wrong("sublayer_gradient_identity_only")),
    ],
    on_exception=shape_error_hint(BN_HINT), finite_differences=_bnb_fd, with_torch=_bnb_torch)

EXERCISES = [IA3_FORWARD, IA3_BACKWARD, PREFIX_ATTENTION, PROMPT_BACKWARD, BOTTLENECK_FORWARD,
             BOTTLENECK_BACKWARD]
