"""Checks on what users pass to a model, with messages that say what to do."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..ops.loss import IGNORE_INDEX


def _as_array(x, what: str, hint: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:
        raise InputError(f"{what} could not be read as an array ({e}); {hint}") from None


def _as_int_array(x, what: str) -> np.ndarray:
    a = _as_array(x, what, "give a (B, T) array or a list of equal-length lists of token "
                  "ids (pad short rows and mask them).")
    if a.dtype == object:
        raise InputError(
            f"{what} is ragged or holds non-numbers; give equal-length rows of integer ids "
            "(pad short rows and pass attention_mask).")
    if a.size == 0:                     # before the dtype check: np.asarray([[]]) is float64
        raise InputError(f"{what} is empty (shape {a.shape}); give at least one token.")
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise InputError(
            f"{what} must hold integers, got dtype {a.dtype}. Token ids come from the "
            "tokenizer (tokenizer.encode(text).ids); cast with .astype(np.int64) if they are "
            "whole numbers stored as floats.")
    if a.ndim != 2:
        hint = " For one sequence, wrap it: [ids]." if a.ndim == 1 else ""
        raise InputError(f"{what} must have shape (B, T), got {a.ndim} dimension(s) {a.shape}.{hint}")
    return a.astype(np.int64, copy=False)


def check_input_ids(input_ids, vocab_size: int, n_positions: int, past: int = 0) -> np.ndarray:
    ids = _as_int_array(input_ids, "input_ids")
    if ids.min() < 0 or ids.max() >= vocab_size:
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise InputError(
            f"input_ids holds {bad}, outside this model's vocabulary 0..{vocab_size - 1}. "
            "Was the text encoded with another tokenizer?")
    if past + ids.shape[1] > n_positions:
        raise InputError(
            f"The sequence is {past + ids.shape[1]} tokens long but this model has only "
            f"n_positions={n_positions} positions; truncate or split it.")
    return ids


def check_attention_mask(attention_mask, shape, past: int = 0) -> np.ndarray | None:
    """-> bool (B, past + T) or None; with a KV cache the mask covers the cached tokens too."""
    if attention_mask is None:
        return None
    mask = _as_array(attention_mask, "attention_mask",
                     "give a (B, T) array of 0 and 1 with the shape of input_ids.")
    B, T = shape
    if mask.shape != (B, past + T):
        covers = (f"the {past} cached tokens plus input_ids {tuple(shape)}, i.e. {(B, past + T)}"
                  if past else f"input_ids {tuple(shape)}")
        raise InputError(
            f"attention_mask has shape {mask.shape} but must match {covers}: "
            "1 for a real token, 0 for padding.")
    if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
        raise InputError("attention_mask must hold only 0 (padding) and 1 (real token).")
    return mask.astype(bool)


def check_past_key_values(past_key_values, shape, config, dtype) -> int:
    """A KV cache as GPT2.forward returns it, for input_ids of ``shape`` -> its length
    T_past (0 for None), with T_past + T <= n_positions."""
    if past_key_values is None:
        return 0
    B, T = shape
    L, NH, hs = config.n_layer, config.n_head, config.head_size
    hint = ("pass back the cache['present_key_values'] of a forward(..., use_cache=True) "
            "on the same model and batch.")
    if len(past_key_values) != L or any(len(kv) != 2 for kv in past_key_values):
        raise InputError(f"past_key_values must be a list of {L} (k, v) pairs, one per layer; {hint}")
    kv_shape = np.shape(past_key_values[0][0])                      # (B, NH, T_past, hs)
    if len(kv_shape) != 4 or kv_shape[:2] != (B, NH) or kv_shape[3] != hs:
        raise InputError(f"past_key_values holds arrays of shape {kv_shape}, expected "
                         f"(B={B}, NH={NH}, T_past, hs={hs}); {hint}")
    for kv in past_key_values:
        for a in kv:
            if np.shape(a) != kv_shape or getattr(a, "dtype", None) != dtype:
                raise InputError(f"past_key_values must all be {dtype} arrays of shape "
                                 f"{kv_shape}; {hint}")
    past = kv_shape[2]
    if past + T > config.n_positions:
        raise InputError(
            f"{past} cached + {T} new tokens = {past + T} exceeds n_positions="
            f"{config.n_positions}; generate fewer tokens or start from a shorter prompt.")
    return past


def check_position_ids(position_ids, shape, n_positions: int) -> np.ndarray | None:
    """-> int64 (B|1, T) or None: each token's row of wpe."""
    if position_ids is None:
        return None
    pos = _as_int_array(position_ids, "position_ids")
    if pos.shape[1] != shape[1] or pos.shape[0] not in (1, shape[0]):
        raise InputError(f"position_ids has shape {pos.shape}; give (B, T) or (1, T) for "
                         f"input_ids {tuple(shape)}.")
    if pos.min() < 0 or pos.max() >= n_positions:
        raise InputError(f"position_ids must lie in 0..{n_positions - 1} (n_positions), "
                         f"got {pos.min()}..{pos.max()}.")
    return pos


def check_labels(labels, shape, vocab_size: int) -> np.ndarray:
    lab = _as_int_array(labels, "labels")
    if lab.shape != tuple(shape):
        raise InputError(
            f"labels has shape {lab.shape} but must match input_ids {tuple(shape)} "
            "(they are shifted inside, as in GPT2LMHeadModel; -100 marks ignored tokens).")
    bad = (lab != IGNORE_INDEX) & ((lab < 0) | (lab >= vocab_size))
    if bad.any():
        raise InputError(
            f"labels holds {lab[bad].flat[0]}: labels must be token ids in 0..{vocab_size - 1} "
            "or -100 (ignored).")
    if not (lab[:, 1:] != IGNORE_INDEX).any():
        raise InputError(
            "No token is left to predict: after the shift (labels[:, 1:]) every label is -100 "
            "(or T == 1). Label at least one token after the first.")
    return lab
