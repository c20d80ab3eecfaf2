"""Text generation: greedy decoding and sampling, with a KV cache.

GPT-2 writes one token at a time: run the sequence, read the logits of the last
position, pick a token, append it, repeat. Run naively, step t recomputes all t
tokens, although the keys and values of the first t - 1 never change (causal
attention: token s only looks at tokens <= s). A **KV cache** keeps, per layer, the
keys and values (B, NH, t, hs) of the tokens seen so far; each step then runs only
the new token through the model: its linear layers once (O(1) in t) and its
attention as one query against t cached keys, O(t), where the recompute costs
O(t) linear rows and O(t²) attention scores. See GPT2.forward(past_key_values=...).

What this file mirrors from `transformers`' GenerationMixin (4.57), so that the same
weights give the same tokens:
- scores are the last position's logits in float32; temperature, then top-k, then
  top-p filter them (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper);
- greedy decoding is argmax, sampling draws from softmax(scores);
- a row that produced ``eos_token_id`` is finished: it gets ``pad_token_id`` (or eos)
  from then on, and generation stops when every row is finished;
- with an ``attention_mask`` (left padding for a batch), token positions are
  cumsum(mask) - 1, padding at position 1, as prepare_inputs_for_generation makes them.
Differences: top_k=None means no top-k (transformers' default config keeps 50), the
random stream is NumPy's (seed=...), not torch's, and the attention mask is never
guessed from pad_token_id: pass it.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from ..errors import ConfigError, InputError
from .inputs import check_attention_mask, check_input_ids

GPT2_EOS = 50256            # <|endoftext|> in GPT-2's tokenizer


def generate(model, input_ids, max_new_tokens, do_sample=False, temperature=1.0, top_k=None,
             top_p=None, seed=None, attention_mask=None, eos_token_id="auto", pad_token_id=None):
    """-> token ids (B, T + n) int64: the prompt followed by n <= max_new_tokens new tokens
    (fewer when every row reached ``eos_token_id``).

    ``do_sample=False`` picks the most likely token (greedy); ``do_sample=True`` samples
    from softmax(logits / temperature) restricted to the ``top_k`` most likely tokens
    and to the smallest set whose probability reaches ``top_p`` (None: no limit), with
    ``numpy.random.default_rng(seed)``. ``attention_mask`` (B, T): 1 for a real token,
    0 for left padding. ``eos_token_id="auto"`` is 50256 (<|endoftext|>) when the
    vocabulary has it, else None (never stop early). A LoRA PeftModel generates with its
    active adapter, in eval mode (no dropout), and is put back in training mode after if
    it was in it.
    """
    training = getattr(model, "training", False)
    if training:
        model.eval()
    try:
        return _generate(model, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p,
                         seed, attention_mask, eos_token_id, pad_token_id)
    finally:
        if training:
            model.train()


def _generate(model, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, seed,
              attention_mask, eos_token_id, pad_token_id):
    cfg = model.config
    ids = check_input_ids(input_ids, cfg.vocab_size, cfg.n_positions)     # (B, T)
    B, T = ids.shape
    mask = check_attention_mask(attention_mask, ids.shape)                # (B, T) bool or None
    _check_length(max_new_tokens, T, cfg.n_positions)
    _check_sampling(do_sample, temperature, top_k, top_p)
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise ConfigError(f"seed must be an integer >= 0 or None, got {seed!r}.")
    if mask is not None and not mask.any(axis=1).all():
        row = int(np.flatnonzero(~mask.any(axis=1))[0])
        raise InputError(f"attention_mask row {row} is all 0: that prompt has no real token to "
                         "continue. Mark its tokens with 1 (padding 0, on the left) or drop the row.")
    if isinstance(eos_token_id, str) and eos_token_id == "auto":
        eos_token_id = GPT2_EOS if cfg.vocab_size > GPT2_EOS else None
    for name, tid in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if tid is not None and not (_is_int(tid) and 0 <= tid < cfg.vocab_size):
            raise ConfigError(f"{name} must be a token id in 0..{cfg.vocab_size - 1} or None, "
                              f"got {tid!r}.")
    pad = pad_token_id if pad_token_id is not None else eos_token_id
    if mask is not None and not mask[:, -1].all():
        warnings.warn("attention_mask has padding at the end of a row: a decoder generates after "
                      "the last token, so pad on the left.", stacklevel=2)
    if max_new_tokens == 0:
        return ids.copy()
    rng = np.random.default_rng(seed)

    # Prefill: the whole prompt in one forward, keeping its keys and values.
    positions = None if mask is None else _positions(mask)              # (B, T)
    logits, cache = model.forward(ids, attention_mask=mask, position_ids=positions,
                                  use_cache=True)                       # (B, T, V)
    out, unfinished = [ids], np.ones(B, dtype=bool)                    # prompt + one (B, 1) per step
    for step in range(max_new_tokens):
        scores = logits[:, -1, :].astype(np.float32)                    # (B, V), float32 as transformers
        if do_sample:
            scores = filter_scores(scores / np.float32(temperature), top_k, top_p)
            token = sample(scores, rng)                                 # (B,)
        else:
            token = scores.argmax(axis=-1)                              # (B,) greedy
        if eos_token_id is not None:
            token = np.where(unfinished, token, pad)                    # finished rows: pad
            unfinished &= token != eos_token_id
        out.append(token[:, None].astype(np.int64))
        if step == max_new_tokens - 1 or not unfinished.any():
            break
        # Decode: only the new token runs; it attends to the cache plus itself.
        if mask is not None:
            mask = np.concatenate([mask, np.ones((B, 1), dtype=bool)], axis=1)  # (B, t + 1)
            positions = mask.sum(axis=1, keepdims=True) - 1             # (B, 1)
        logits, cache = model.forward(token[:, None], attention_mask=mask, position_ids=positions,
                                      past_key_values=cache["present_key_values"],
                                      use_cache=True)                   # (B, 1, V)
    return np.concatenate(out, axis=1)


def filter_scores(scores, top_k=None, top_p=None):
    """scores (B, V) -> the same with -inf outside the kept set: top-k, then top-p.

    top-k keeps every token scoring at least the k-th best (ties with it stay).
    top-p sorts ascending, softmaxes, accumulates, and drops the tokens whose cumulative
    probability is <= 1 - top_p, always keeping the most likely one: what remains is the
    smallest set of most likely tokens whose probability reaches top_p.
    Exactly TopKLogitsWarper / TopPLogitsWarper (min_tokens_to_keep=1); top_p=1 filters nothing.
    """
    scores = np.array(scores, copy=True)
    if top_k is not None:
        k = min(top_k, scores.shape[-1])
        kth = np.partition(scores, -k, axis=-1)[:, [-k]]               # (B, 1) k-th best
        scores[scores < kth] = -np.inf
    if top_p is not None and top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")              # (B, V) ascending
        s = np.take_along_axis(scores, order, axis=-1)
        p = np.exp(s - s[:, -1:])
        p /= p.sum(axis=-1, keepdims=True)                              # softmax, sorted
        cum = np.cumsum(p, axis=-1, dtype=np.float64).astype(p.dtype)  # summed in float64, as torch
        drop_sorted = cum <= 1 - top_p
        drop_sorted[:, -1] = False                                      # keep the best token
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)            # back to token order
        scores[drop] = -np.inf
    return scores


def sample(scores, rng):
    """One token per row from softmax(scores) (B, V), by inverting the cumulative sum."""
    p = np.exp(scores.astype(np.float64) - scores.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)                                         # (B, V), unnormalised
    u = (1.0 - rng.random(len(scores)))[:, None] * cdf[:, -1:]          # in (0, total]
    token = (cdf < u).sum(axis=-1)                                      # first cdf >= u
    return np.minimum(token, scores.shape[-1] - 1)


def _positions(mask):
    """Positions of left-padded rows, as transformers' prepare_inputs_for_generation:
    the n-th real token sits at n - 1; padding gets 1 (it is masked anyway)."""
    pos = np.cumsum(mask, axis=1) - 1                                   # (B, T)
    pos[~mask] = 1
    return pos


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_length(max_new_tokens, T, n_positions):
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
    if T + max_new_tokens > n_positions:
        shorter = (f", or keep only the last {n_positions - max_new_tokens} prompt tokens"
                   if max_new_tokens < n_positions else "")
        raise InputError(
            f"The prompt has {T} tokens and max_new_tokens={max_new_tokens}: {T + max_new_tokens} "
            f"exceeds this model's n_positions={n_positions}. Ask for at most "
            f"{n_positions - T} new tokens{shorter}.")


def _check_sampling(do_sample, temperature, top_k, top_p):
    if not isinstance(do_sample, (bool, np.bool_)):
        raise ConfigError(f"do_sample must be True (sample) or False (greedy), got {do_sample!r}.")
    if not isinstance(temperature, numbers.Real) or not np.isfinite(temperature):
        raise ConfigError(f"temperature must be a finite number, got {temperature!r}.")
    if do_sample and temperature <= 0:
        raise ConfigError(f"temperature must be > 0 when sampling (logits are divided by it), got "
                          f"{temperature}; for the single most likely token use do_sample=False.")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ConfigError(f"top_k must be an integer >= 1 (keep the k most likely tokens) or None, "
                          f"got {top_k!r}.")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise ConfigError(f"top_p must be in (0, 1] (the probability mass to keep) or None, "
                          f"got {top_p!r}.")
    if not do_sample and (temperature != 1.0 or top_k is not None or top_p is not None):
        warnings.warn("temperature, top_k and top_p only act when do_sample=True; greedy decoding "
                      "ignores them.", stacklevel=3)
