"""Training data: prompt/completion examples for fine-tuning, text windows for pretraining.

Fine-tuning data is a JSONL file, one example a line:

    {"prompt": "name[Little Fig] | food[Italian]\\nSentence:", "completion": " Little Fig ..."}

Each example becomes one sequence, ``prompt + completion + <|endoftext|>``, and the
loss counts only the completion and the end-of-text token: the prompt's labels are
``-100``, so the model learns to *answer* prompts, not to write them. The trailing
``<|endoftext|>`` teaches it to stop.

Prompt and completion are tokenized separately and then joined, so the boundary
between what is given and what is learned falls exactly between two tokens. Start
the completion with a space (``" Little Fig is ..."``): GPT-2 glues a word's leading
space to the word (``"Ġis"`` is one token), so a prompt ending in a space would end
in a lone ``"Ġ"`` token that the model hardly ever saw in pretraining.

Every shuffle here is drawn from ``np.random.default_rng((seed, epoch))`` or
``(seed, step)``: a pure function of its arguments, so a run resumed from a
checkpoint at step k sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..io.files import check_text, read_text
from ..io.jsonfile import parse_json
from ..ops.loss import IGNORE_INDEX

FIELDS = ("prompt", "completion")
_EXAMPLE_LINE = '{"prompt": "...", "completion": " ..."}'


# --- reading ----------------------------------------------------------------

def read_jsonl(path: str | os.PathLike[str]) -> list[dict]:
    """Read prompt/completion examples from a JSONL file, one JSON object per line.

    Blank lines are skipped; other keys of an object are kept. The file is read by
    ``io.files.read_text`` (UTF-8, a byte-order mark tolerated) and each line by
    ``io.jsonfile.parse_json``, the one JSON reader: any problem (not UTF-8, bad
    JSON, nesting too deep, NaN, not an object, a field missing) is an
    ``InputError`` naming the file and the line.
    """
    path = Path(path)
    text = read_text(path, what="JSONL file",
                     fix=f"Pass a JSONL file with one {_EXAMPLE_LINE} per line.")
    examples = []
    # split("\n"), not splitlines(): JSON strings may hold a raw U+2028 or \x1c, which
    # splitlines() would treat as line ends (a "\r" left by CRLF is JSON whitespace).
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            examples.append(_parse_line(line, f"{path}, line {number}"))
    if not examples:
        state = "is empty" if not text else "holds only blank lines"
        raise InputError(f"{path} {state}: no examples to train on. Write one "
                         f"{_EXAMPLE_LINE} per line.")
    return examples


def _parse_line(line: str, where: str) -> dict:
    obj = parse_json(line, where, expect=dict, error=InputError,
                     fix=f"Each line must be one JSON object like {_EXAMPLE_LINE}.")
    _check_example(obj, where)
    return obj


def _check_example(obj: dict, where: str) -> None:
    for field in FIELDS:
        if field not in obj:
            raise InputError(f"{where}: no {field!r} field (keys: {sorted(obj)}); every example "
                             f"needs both {FIELDS[0]!r} and {FIELDS[1]!r}.")
        if not isinstance(obj[field], str):
            raise InputError(f"{where}: {field!r} is {_json_type(obj[field])}; it must be "
                             "a string.")
        check_text(obj[field], f"{where}: {field!r}")     # no lone surrogates ("\\udcff")
    if obj["completion"] == "":
        raise InputError(f"{where}: 'completion' is empty, so there is nothing to learn; "
                         "give the text the model should write after the prompt.")


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- encoding ---------------------------------------------------------------

def encode_examples(examples: list[dict], tokenizer, max_length: int, eos_id: int,
                    truncate: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Examples -> list of (ids, labels), each an int64 array of the example's length.

    ids = prompt tokens + completion tokens + eos_id; labels = ids with -100 on every
    prompt token. A sequence longer than ``max_length`` is refused, or with
    ``truncate=True`` loses prompt tokens from the left (the start of the prompt) so
    that the completion stays whole.
    """
    if not isinstance(max_length, (int, np.integer)) or max_length < 2:
        raise ConfigError(f"max_length={max_length!r}: it must be an integer >= 2 (a "
                          "completion token and the end-of-text token).")
    vocab_size = tokenizer.get_vocab_size()
    if not isinstance(eos_id, (int, np.integer)) or not 0 <= eos_id < vocab_size:
        raise ConfigError(f"eos_id={eos_id!r} is not an id of this tokenizer (0..{vocab_size - 1}); "
                          "pass tokenizer.token_to_id('<|endoftext|>').")
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict):
            raise InputError(f"example {i} is {type(ex).__name__}, not a dict with "
                             f"{FIELDS[0]!r} and {FIELDS[1]!r}.")
        _check_example(ex, f"example {i}")
    prompts = tokenizer.encode_batch([ex["prompt"] for ex in examples])
    completions = tokenizer.encode_batch([ex["completion"] for ex in examples])

    encoded = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        prompt, target = p.ids, c.ids + [int(eos_id)]
        if len(target) == 1:
            raise InputError(f"example {i}: the completion {examples[i]['completion']!r} "
                             "gives no tokens; give it some text.")
        if len(target) > max_length:
            raise InputError(
                f"example {i}: the completion alone is {len(target) - 1} tokens + 1 end-of-text, "
                f"more than max_length={max_length}; raise max_length or shorten the completion."
            )
        if len(prompt) + len(target) > max_length:
            if not truncate:
                raise InputError(
                    f"example {i} is {len(prompt) + len(target)} tokens ({len(prompt)} prompt + "
                    f"{len(target) - 1} completion + 1 end-of-text), more than max_length="
                    f"{max_length}; raise max_length or pass truncate=True to cut the prompt "
                    "from the left."
                )
            prompt = prompt[len(prompt) + len(target) - max_length:]
        ids = np.array(prompt + target, dtype=np.int64)     # (T,)
        labels = ids.copy()
        labels[:len(prompt)] = IGNORE_INDEX                  # no loss on the prompt
        encoded.append((ids, labels))
    return encoded


# --- batching ---------------------------------------------------------------

def batches(encoded: list[tuple[np.ndarray, np.ndarray]], batch_size: int, seed: int,
            epoch: int, pad_id: int | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One epoch of shuffled, right-padded batches: a list of (ids, labels, attention_mask).

    Each array is int64 (B, T), T the longest example of the batch; the last batch
    keeps what is left (B <= batch_size). Padding has label -100 and mask 0, and the
    id ``pad_id``, by default each row's own last token (the end-of-text that
    ``encode_examples`` appends, as GPT-2 has no pad token). The pad id never
    reaches the loss: a pad is never a target, and with right padding and causal
    attention no real token looks at one.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: it must be a positive integer.")
    if not encoded:
        raise InputError("batches: no examples to batch.")
    order = np.random.default_rng((seed, epoch)).permutation(len(encoded))
    out = []
    for start in range(0, len(order), batch_size):
        rows = [encoded[k] for k in order[start:start + batch_size]]
        B, T = len(rows), max(len(ids) for ids, _ in rows)
        ids = np.empty((B, T), dtype=np.int64)
        labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((B, T), dtype=np.int64)
        for b, (x, y) in enumerate(rows):
            n = len(x)
            ids[b, :n], labels[b, :n], mask[b, :n] = x, y, 1
            ids[b, n:] = x[-1] if pad_id is None else pad_id
        out.append((ids, labels, mask))
    return out


def lm_windows(token_ids: np.ndarray, block_size: int, batch_size: int, seed: int,
               step: int) -> tuple[np.ndarray, np.ndarray]:
    """A pretraining batch: ``batch_size`` random windows of ``block_size`` tokens.

    Returns (ids, labels), int64 (B, T) with labels = ids: the model shifts inside,
    so a window of T tokens gives T - 1 next-token targets. The start positions
    are drawn from ``np.random.default_rng((seed, step))``.
    """
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1:
        raise InputError(f"lm_windows: token_ids must be 1-D, got shape {token_ids.shape}.")
    if len(token_ids) < block_size:
        raise InputError(f"lm_windows: {len(token_ids)} tokens, fewer than block_size="
                         f"{block_size}; give more text or a smaller block_size.")
    starts = np.random.default_rng((seed, step)).integers(0, len(token_ids) - block_size + 1,
                                                           size=batch_size)
    ids = np.stack([token_ids[s:s + block_size] for s in starts]).astype(np.int64)  # (B, T)
    return ids, ids.copy()


def train_val_split(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Split ``items`` into (train, val) at random, each kept in its original order.

    ``round(len(items) * val_fraction)`` items go to val, at least one when
    ``val_fraction > 0``, and at least one always stays in train.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction!r}: it must be in [0, 1).")
    n = len(items)
    n_val = round(n * val_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise InputError(f"train_val_split: {n} item(s) cannot give both a train and a val "
                         f"part with val_fraction={val_fraction}; give more data.")
    picked = np.random.default_rng(seed).permutation(n)[:n_val]
    is_val = np.zeros(n, dtype=bool)
    is_val[picked] = True
    return ([x for x, v in zip(items, is_val) if not v], [x for x, v in zip(items, is_val) if v])
