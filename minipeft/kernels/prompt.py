"""Numba kernels for prompt tuning, the fast twins of ``minipeft.peft.prompt``.

Each kernel has its twin's signature and returns the same values, cache included;
tests/test_prompt_tuning.py holds them equal. What each kernel fuses:

    prompt_embedding_forward   the copy of the prompt rows, the gather of wte[ids] and
                               the add of wpe[pos] in one pass over x (B, P + T, C):
                               the twin writes x, then reads it again for the add
    prompt_embedding_backward  the sum over the batch of dx[:, :P] in one pass, row by
                               row (no (B, P, C) temporary)

Serial, as the LoRA kernels (see kernels/lora.py): both sit between BLAS calls, and
Numba's spinning OpenMP threads would slow the next one.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

_jit = dict(cache=True, fastmath=False)   # fastmath off: keep the twin's arithmetic


class PromptCache(NamedTuple):
    """The twin's cache (peft/prompt.py), defined here so that kernels import nothing from
    peft/; tests/test_prompt_tuning.py holds the two equal, fields and values."""
    num_virtual_tokens: int                # P


@njit(**_jit)
def _forward(input_ids, prompt, wte, wpe, position_ids, x):
    B, T = input_ids.shape
    P, C = prompt.shape
    for b in range(B):
        pb = 0 if position_ids.shape[0] == 1 else b           # (1, P + T) broadcast over B
        for t in range(P):                 # x[:, :P] = prompt; x += wpe[position_ids]
            p = position_ids[pb, t]
            for c in range(C):
                x[b, t, c] = prompt[t, c] + wpe[p, c]
        for t in range(T):                 # x[:, P:] = wte[input_ids]; x += wpe[position_ids]
            j, p = input_ids[b, t], position_ids[pb, P + t]
            for c in range(C):
                x[b, P + t, c] = wte[j, c] + wpe[p, c]


def prompt_embedding_forward(input_ids, prompt, wte, wpe, position_ids):
    """ids (B, T), prompt (P, C), wte (V, C), wpe (n_positions, C), position_ids (B|1, P + T)
    -> (x (B, P + T, C), cache)."""
    dt = np.result_type(prompt, wte, wpe)
    B, T = input_ids.shape
    P, C = prompt.shape
    x = np.empty((B, P + T, C), dtype=dt)
    _forward(np.ascontiguousarray(input_ids, np.int64), np.ascontiguousarray(prompt, dt),
             np.ascontiguousarray(wte, dt), np.ascontiguousarray(wpe, dt),
             np.ascontiguousarray(position_ids, np.int64), x)
    return x, PromptCache(P)


@njit(**_jit)
def _backward(dx, P):
    B, _, C = dx.shape
    dprompt = np.zeros((P, C), dx.dtype)                        # (P, C)
    for b in range(B):                     # dx[:, :P].sum(axis=0)
        for t in range(P):
            for c in range(C):
                dprompt[t, c] += dx[b, t, c]
    return dprompt


def prompt_embedding_backward(dx, cache):
    """dx (B, P + T, C) -> dprompt (P, C): the prompt's rows, summed over the batch."""
    return _backward(np.ascontiguousarray(dx), cache.num_virtual_tokens)
