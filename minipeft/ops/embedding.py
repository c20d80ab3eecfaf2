"""Token + position embedding: the first op of GPT-2.

    x[b, t] = wte[ids[b, t]] + wpe[pos[b, t]]

Backward scatters the upstream gradient back into the rows that were read; a token
that appears twice receives the sum of both gradients.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class EmbeddingCache(NamedTuple):
    input_ids: np.ndarray                   # (B, T) the rows of wte that were read
    position_ids: np.ndarray                # (B, T) the rows of wpe (a broadcast view)
    wte_shape: tuple                        # (V, C)
    wpe_shape: tuple                        # (P, C)


def embedding_forward(input_ids, wte, wpe, position_ids):
    """(B, T) ids, (V, C) wte, (P, C) wpe, (B|1, T) positions -> (B, T, C)."""
    out = wte[input_ids]                    # (B, T, C) gather
    out += wpe[position_ids]                # broadcast over B when positions are (1, T)
    cache = EmbeddingCache(input_ids, np.broadcast_to(position_ids, input_ids.shape),
                           wte.shape, wpe.shape)
    return out, cache


def embedding_backward(dout, cache, dwte=None, need_wte=True, need_wpe=True):
    """dout (B, T, C) -> (dwte (V, C), dwpe (P, C)); either is None when not needed.

    ``dwte`` may be passed in to accumulate into (GPT-2 ties wte to the lm_head,
    whose gradient is computed first).
    """
    input_ids, position_ids, wte_shape, wpe_shape = cache
    C = dout.shape[-1]
    d2 = dout.reshape(-1, C)                # (B*T, C)
    if need_wte:
        if dwte is None:
            dwte = np.zeros(wte_shape, dtype=dout.dtype)
        np.add.at(dwte, input_ids.reshape(-1), d2)
    else:
        dwte = None
    dwpe = None
    if need_wpe:
        dwpe = np.zeros(wpe_shape, dtype=dout.dtype)
        np.add.at(dwpe, position_ids.reshape(-1), d2)
    return dwte, dwpe
