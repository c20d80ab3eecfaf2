"""Prompt tuning: P trainable virtual-token embeddings put before the input.

Prompt tuning (Lester, Al-Rfou & Constant 2021, "The Power of Scale for
Parameter-Efficient Prompt Tuning", arXiv:2104.08691) freezes the whole model and
learns a "soft prompt": P vectors of the embedding width C that the model reads as
if they were the embeddings of P extra tokens in front of every input.

    x = concat(prompt, wte[ids]) + wpe[pos]                 (B, P + T, C)
        prompt (P, C) = prompt_embeddings, the same rows for every sequence of the batch
        pos = 0 .. P - 1 for the virtual tokens, P .. P + T - 1 for the real ones

The blocks, ln_f and the lm_head then run unchanged on P + T tokens; the logits of
the real tokens are the last T. As peft pads the labels with -100 for the virtual
tokens, the last virtual position is scored on the first real token: the prompt is
the context that predicts it.

Backward: the prompt is shared by the batch, so its gradient is the sum over b of
the gradient reaching its rows (wte and wpe are frozen and get none):

    dprompt = Σ_b dx[b, :P]                                 (P, C)

Initialisation (peft's PromptTuningInit):
    RANDOM        prompt ~ N(0, 1), torch.nn.Embedding's default
    SAMPLE_VOCAB  prompt = wte[j] for P ids j drawn uniformly from 0 .. V - 1
    TEXT          prompt = wte[ids of the init text], repeated or cut to P tokens

Trainable parameters: P · C (20 · 768 = 15,360 for GPT-2 124M with P = 20).

Every function here is the plain NumPy twin of a Numba kernel in
``minipeft.kernels.prompt``; the tests hold the two equal.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class PromptCache(NamedTuple):
    """What backward needs from prompt_embedding_forward: the number of virtual tokens."""
    num_virtual_tokens: int


def prompt_embedding_forward(input_ids, prompt, wte, wpe, position_ids):
    """ids (B, T), prompt (P, C), wte (V, C), wpe (n_positions, C), position_ids (B|1, P + T)
    -> (x (B, P + T, C), cache)."""
    B, T = input_ids.shape
    P, C = prompt.shape
    x = np.empty((B, P + T, C), dtype=np.result_type(prompt, wte, wpe))
    x[:, :P] = prompt                       # the virtual tokens, the same for every row
    x[:, P:] = wte[input_ids]               # the real tokens (gather)
    x += wpe[position_ids]                  # (B|1, P + T, C), broadcast over B
    return x, PromptCache(P)


def prompt_embedding_backward(dx, cache):
    """dx (B, P + T, C) -> dprompt (P, C): the prompt's rows, summed over the batch."""
    P = cache.num_virtual_tokens
    return dx[:, :P].sum(axis=0)            # x[:, :P] = prompt (broadcast over B)


def prompt_positions(P: int, position_ids):
    """Positions of virtual + real tokens (B|1, P + T): 0 .. P - 1, then P + position_ids
    (the real tokens' positions counted from 0, as for the base model)."""
    virtual = np.broadcast_to(np.arange(P), (position_ids.shape[0], P))
    return np.concatenate([virtual, P + position_ids], axis=1)


# ------------------------------------------------------------------ peft's inits
def random_init(rng: np.random.Generator, P: int, C: int, dtype) -> np.ndarray:
    """RANDOM: N(0, 1) as torch.nn.Embedding (peft warns that such soft tokens may lie
    far from the embeddings of real words)."""
    return rng.standard_normal((P, C)).astype(dtype)


def sample_vocab_init(rng: np.random.Generator, P: int, wte) -> np.ndarray:
    """SAMPLE_VOCAB: the embeddings of P token ids drawn uniformly from the vocabulary."""
    ids = rng.integers(0, wte.shape[0], size=P)
    return wte[ids].copy()


def text_init_ids(token_ids, P: int) -> list[int]:
    """TEXT: the init text's token ids, cut to P or repeated until there are P, as peft."""
    ids = list(token_ids)
    if len(ids) < P:
        ids = ids * math.ceil(P / len(ids))
    return ids[:P]
