"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation", ACL 2021): the forward and backward in NumPy.

Every layer l gets P trainable key and value vectors per head, the "prefix", that
each real token attends to before its own causal context; the base model is frozen:

    K_l = [Kp_l ; X_l W_k],  V_l = [Vp_l ; X_l W_v]            (B, NH, P + T, hs)
    softmax(Q_l K_lᵀ / √hs + mask) V_l                          causal over the T tokens,
                                                                all P prefix slots visible
The L layers' prefixes are one matrix, one row per virtual token:

    flat:        prefix = E                                     E (P, 2·L·C) trained directly
    projection:  prefix = tanh(E W1ᵀ + b1) W2ᵀ + b2             E (P, C), W1 (H, C), W2 (2LC, H)

The reparametrization MLP (the paper's §4.3, ``prefix_projection=True``, H =
``encoder_hidden_size``) only makes training stable; afterwards only its output
counts, so peft saves that output, ``prompt_embeddings`` (P, 2LC), and a loaded
adapter is flat. Row p of the prefix splits as peft's ``get_prompt`` views it:

    prefix.reshape(P, 2L, NH, hs).transpose(1, 2, 0, 3)         (2L, NH, P, hs)
    layer l:  Kp_l = [2l],  Vp_l = [2l + 1]                     broadcast over the batch

Backward: the layers' dKp, dVp (summed over the batch) fill the same slots, the
reshape is undone, and the MLP backward (tanh' = 1 − h²) gives dE, dW1, db1, dW2, db2.

Two conventions place the real tokens (see prefix_model.py):
    peft (PREFIX_TUNING):  the prefix enters as past keys/values: tokens take positions
                           P .. P + T − 1, so P + T <= n_positions
    AdapterHub (adapters): the prefix is concatenated inside attention: positions 0 .. T − 1
The attention itself is the same. nn.Linear weights keep torch's (out, in) layout,
as peft names them (``prompt_encoder.transform.0.weight``).

Parameters: flat P·2LC; with projection P·C + (C·H + H) + (H·2LC + 2LC).
"""
from __future__ import annotations

import numpy as np


def prefix_mlp_forward(emb, w1, b1, w2, b2):
    """emb (P, C) -> prefix (P, 2LC) = tanh(emb w1ᵀ + b1) w2ᵀ + b2; cache (emb, h)."""
    h = np.tanh(emb @ w1.T + b1)                                # (P, H)
    return h @ w2.T + b2, (emb, h)                              # (P, 2LC)


def prefix_mlp_backward(dprefix, cache, w1, w2):
    """dprefix (P, 2LC) -> (demb (P, C), dw1 (H, C), db1 (H,), dw2 (2LC, H), db2 (2LC,))."""
    emb, h = cache
    # prefix = h w2ᵀ + b2
    dw2 = dprefix.T @ h                                         # (2LC, H)
    db2 = dprefix.sum(axis=0)                                   # (2LC,)
    dh = dprefix @ w2                                           # (P, H)
    # h = tanh(a), a = emb w1ᵀ + b1
    da = dh * (1 - h * h)                                       # (P, H)
    dw1 = da.T @ emb                                            # (H, C)
    db1 = da.sum(axis=0)                                        # (H,)
    demb = da @ w1                                              # (P, C)
    return demb, dw1, db1, dw2, db2


def prefix_to_kv(prefix, n_layer, n_head):
    """prefix (P, 2LC) -> kv (2L, NH, P, hs), a view: peft's
    ``view(B, P, 2L, NH, hs).permute(2, 0, 3, 1, 4)`` without the batch axis."""
    P = prefix.shape[0]
    return prefix.reshape(P, 2 * n_layer, n_head, -1).transpose(1, 2, 0, 3)


def prefix_to_kv_backward(dkv):
    """Backward of prefix_to_kv: dkv (2L, NH, P, hs) -> dprefix (P, 2LC)."""
    P = dkv.shape[2]
    return np.ascontiguousarray(dkv.transpose(2, 0, 1, 3)).reshape(P, -1)


def layer_past(kv, batch_size):
    """kv (2L, NH, P, hs) -> per layer (k, v), each (B, NH, P, hs): read-only
    broadcasts, as ``past_key_values`` for GPT2.forward."""
    shape = (batch_size,) + kv.shape[1:]
    return [(np.broadcast_to(kv[2 * i], shape), np.broadcast_to(kv[2 * i + 1], shape))
            for i in range(kv.shape[0] // 2)]
