"""Fine-tuning data: reading JSONL (every error names file and line), prompt masking,
truncation, deterministic padded batches, pretraining windows, the train/val split."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minipeft.errors import ConfigError, InputError, MinipeftError
from minipeft.tasks.restaurants import make_examples
from minipeft.tokenizer import load_tokenizer
from minipeft.train.data import batches, encode_examples, lm_windows, read_jsonl, train_val_split


@pytest.fixture(scope="module")
def tok():
    """GPT-2's own tokenizer (bundled with the package)."""
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def eos(tok):
    return tok.token_to_id("<|endoftext|>")


# --- read_jsonl -------------------------------------------------------------

def write(tmp_path, text, name="data.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line(prompt="Q:", completion=" A", **extra):
    return json.dumps({"prompt": prompt, "completion": completion, **extra}) + "\n"


def test_read_jsonl(tmp_path):
    path = write(tmp_path, line("one", " 1") + "\n   \n" + line("two", " 2", slots={"x": "y"}) + "\n")
    assert read_jsonl(path) == [{"prompt": "one", "completion": " 1"},
                                {"prompt": "two", "completion": " 2", "slots": {"x": "y"}}]
    assert read_jsonl(str(path)) == read_jsonl(path)


def test_read_jsonl_crlf_bom_and_unicode_line_separators(tmp_path):
    path = tmp_path / "windows.jsonl"
    odd = json.dumps({"prompt": "a\u2028b\x1cc", "completion": " é"}, ensure_ascii=False)
    path.write_bytes(b"\xef\xbb\xbf" + (line() + odd + "\n").replace("\n", "\r\n").encode("utf-8"))
    assert read_jsonl(path) == [{"prompt": "Q:", "completion": " A"},
                                {"prompt": "a\u2028b\x1cc", "completion": " é"}]


def test_read_jsonl_empty_prompt_is_fine(tmp_path):
    assert read_jsonl(write(tmp_path, line("", "text")))[0]["prompt"] == ""


@pytest.mark.parametrize("bad, expected", [
    ('{"prompt": "x", "completion": }', "not valid JSON"),
    ("not json at all", "not valid JSON"),
    ('["prompt", "completion"]', "must hold a JSON object ({...}) at the top, got a JSON array"),
    ('"just a string"', "must hold a JSON object ({...}) at the top, got a string"),
    # what Python's json does with hostile input: RecursionError, ValueError, NaN, a lone surrogate
    ("[" * 100_000 + "]" * 100_000, "nests JSON too deeply"),
    ('{"prompt": "Q", "completion": " A", "n": ' + "9" * 5000 + "}", "integer too long"),
    ('{"prompt": "Q", "completion": " A", "score": NaN}', "NaN is not JSON"),
    ('{"prompt": "Q", "completion": " A", "score": -Infinity}', "-Infinity is not JSON"),
    ('{"prompt": "Q\\udcff", "completion": " A"}', "'prompt' is not UTF-8 text: character 1 is "
                                                   "the byte 0xff"),
    ('{"prompt": "Q", "completion": " \\ud800"}', "'completion' is not UTF-8 text: character 1 is "
                                                  "a lone surrogate U+D800"),
    ('{"completion": " A"}', "no 'prompt' field"),
    ('{"prompt": "Q"}', "no 'completion' field"),
    ('{"prompt": 3, "completion": " A"}', "'prompt' is a number; it must be a string"),
    ('{"prompt": "Q", "completion": null}', "'completion' is null; it must be a string"),
    ('{"prompt": "Q", "completion": [" A"]}', "'completion' is an array"),
    ('{"prompt": "Q", "completion": ""}', "'completion' is empty"),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, bad, expected):
    path = write(tmp_path, line() + "\n" + bad + "\n" + line())   # the bad one is on line 3
    with pytest.raises(InputError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert f"{path}, line 3" in message, message
    assert expected in message, message
    assert "Traceback" not in message and len(message) < 400, message


@pytest.mark.parametrize("text, expected", [("", "is empty"), ("\n  \n\n", "only blank lines")])
def test_read_jsonl_no_examples(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(InputError, match="no examples") as info:
        read_jsonl(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_read_jsonl_missing_file_or_folder(tmp_path):
    with pytest.raises(MinipeftError, match="does not exist") as info:
        read_jsonl(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(info.value)
    with pytest.raises(MinipeftError, match="is a folder"):
        read_jsonl(tmp_path)


def test_read_jsonl_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    latin1 = '{"prompt": "café", "completion": " x"}\n'.encode("latin-1")
    path.write_bytes(line().encode() + line().encode() + latin1)
    with pytest.raises(InputError, match=r"line 3: not UTF-8 text \(byte 0xe9 at column 16\)"):
        read_jsonl(path)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="named pipes are POSIX")
def test_read_jsonl_refuses_a_pipe_rather_than_hang(tmp_path):
    import os
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(InputError, match="is not a regular file"):
        read_jsonl(tmp_path / "pipe.jsonl")


# --- encode_examples --------------------------------------------------------

EXAMPLES = [
    {"prompt": "name[Moonstone] | food[French]\nSentence:", "completion": " Moonstone serves French food."},
    {"prompt": "Translate to French: cheese =>", "completion": " fromage"},
]


def test_encode_masks_exactly_the_prompt(tok, eos):
    for ex, (ids, labels) in zip(EXAMPLES, encode_examples(EXAMPLES, tok, 64, eos)):
        prompt, completion = tok.encode(ex["prompt"]).ids, tok.encode(ex["completion"]).ids
        P = len(prompt)
        assert ids.dtype == labels.dtype == np.int64
        assert ids.tolist() == prompt + completion + [eos]
        assert (labels[:P] == -100).all()
        assert labels[P:].tolist() == completion + [eos]
        assert tok.decode(ids[labels != -100].tolist(), skip_special_tokens=False) == \
            ex["completion"] + "<|endoftext|>"


def test_encode_refuses_too_long(tok, eos):
    P, C = (len(tok.encode(EXAMPLES[0][k]).ids) for k in ("prompt", "completion"))
    encode_examples(EXAMPLES[:1], tok, P + C + 1, eos)     # exactly max_length: fine
    with pytest.raises(InputError) as info:
        encode_examples(EXAMPLES[1:] + EXAMPLES[:1], tok, P + C, eos)
    message = str(info.value)
    for part in ("example 1", f"{P + C + 1} tokens", f"{P} prompt", f"{C} completion",
                 f"max_length={P + C}", "raise max_length", "truncate=True"):
        assert part in message, (part, message)


def test_encode_truncates_the_prompt_from_the_left(tok, eos):
    ex = EXAMPLES[0]
    prompt, completion = tok.encode(ex["prompt"]).ids, tok.encode(ex["completion"]).ids
    max_length = len(completion) + 1 + 3                    # room for 3 prompt tokens
    [(ids, labels)] = encode_examples([ex], tok, max_length, eos, truncate=True)
    assert ids.tolist() == prompt[-3:] + completion + [eos]
    assert labels.tolist() == [-100] * 3 + completion + [eos]
    [(ids, labels)] = encode_examples([ex], tok, len(completion) + 1, eos, truncate=True)
    assert ids.tolist() == labels.tolist() == completion + [eos]  # no prompt left at all


def test_encode_refuses_a_completion_longer_than_max_length(tok, eos):
    C = len(tok.encode(EXAMPLES[0]["completion"]).ids)
    with pytest.raises(InputError, match=rf"example 0: the completion alone is {C} tokens"):
        encode_examples(EXAMPLES, tok, C, eos, truncate=True)


def test_encode_bad_examples(tok, eos):
    with pytest.raises(InputError, match="example 1: 'completion' is empty"):
        encode_examples([EXAMPLES[0], {"prompt": "Q", "completion": ""}], tok, 64, eos)
    with pytest.raises(InputError, match="example 0: no 'completion' field"):
        encode_examples([{"prompt": "Q"}], tok, 64, eos)
    with pytest.raises(InputError, match="example 0 is str"):
        encode_examples(["Q A"], tok, 64, eos)
    with pytest.raises(ConfigError, match="eos_id"):
        encode_examples(EXAMPLES, tok, 64, tok.get_vocab_size())
    with pytest.raises(ConfigError, match="max_length"):
        encode_examples(EXAMPLES, tok, 1, eos)


# --- batches ----------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded(tok, eos):
    return encode_examples(make_examples(23, seed=5), tok, 128, eos)


def test_batches_cover_the_epoch_padded(encoded, eos):
    out = batches(encoded, 5, seed=0, epoch=0)
    assert [b[0].shape[0] for b in out] == [5, 5, 5, 5, 3]        # the last, smaller batch is kept
    seen = []
    for ids, labels, mask in out:
        assert ids.dtype == labels.dtype == mask.dtype == np.int64
        assert ids.shape == labels.shape == mask.shape
        lengths = mask.sum(axis=1)
        assert lengths.max() == ids.shape[1]                        # padded to the longest
        for row, n in enumerate(lengths):
            assert (mask[row, :n] == 1).all() and (mask[row, n:] == 0).all()   # right padding
            assert (ids[row, n:] == eos).all() and (labels[row, n:] == -100).all()
            seen.append(ids[row, :n].tolist())
            match = [k for k, (x, y) in enumerate(encoded) if x.tolist() == seen[-1]]
            assert match and labels[row, :n].tolist() == encoded[match[0]][1].tolist()
    assert sorted(seen) == sorted(x.tolist() for x, _ in encoded)   # every example once


def test_batches_loss_counts_completion_and_eos(tok, encoded):
    examples = make_examples(23, seed=5)
    expected = sum(len(tok.encode(e["completion"]).ids) + 1 for e in examples)
    counted = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in batches(encoded, 4, 0, 0))
    assert counted == expected


def test_batches_are_a_pure_function_of_seed_and_epoch(encoded):
    def order(seed, epoch):
        return [ids.tolist() for ids, _, _ in batches(encoded, 4, seed, epoch)]
    later = order(1, 3)                    # computed first: no hidden state between calls
    assert order(1, 0) == order(1, 0)
    assert order(1, 3) == later
    assert order(1, 0) != order(1, 1)      # a new shuffle every epoch
    assert order(1, 0) != order(2, 0)


def test_batches_pad_id_and_errors(encoded):
    ids, _, mask = batches(encoded, 23, 0, 0, pad_id=7)[0]
    assert (ids[mask == 0] == 7).all()
    with pytest.raises(ConfigError, match="batch_size"):
        batches(encoded, 0, 0, 0)
    with pytest.raises(InputError, match="no examples"):
        batches([], 4, 0, 0)


# --- lm_windows and train_val_split ----------------------------------------

def test_lm_windows():
    tokens = np.arange(1000, 1100)
    ids, labels = lm_windows(tokens, block_size=16, batch_size=8, seed=3, step=10)
    assert ids.shape == labels.shape == (8, 16) and ids.dtype == np.int64
    assert (ids == labels).all()                                    # the model shifts inside
    assert (np.diff(ids, axis=1) == 1).all()                        # contiguous windows
    again, _ = lm_windows(tokens, 16, 8, seed=3, step=10)
    assert (again == ids).all()
    other, _ = lm_windows(tokens, 16, 8, seed=3, step=11)
    assert not (other == ids).all()
    full, _ = lm_windows(tokens, 100, 2, seed=0, step=0)            # the whole text fits once
    assert (full == tokens).all()
    with pytest.raises(InputError, match="fewer than block_size=101"):
        lm_windows(tokens, 101, 2, 0, 0)


def test_train_val_split():
    items = [f"item{i}" for i in range(50)]
    train, val = train_val_split(items, 0.2, seed=0)
    assert (train, val) == train_val_split(items, 0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert sorted(train + val) == sorted(items)
    assert train == [x for x in items if x in train]                # original order kept
    assert train_val_split(items, 0.2, seed=1)[1] != val
    assert train_val_split(items[:3], 0.01, 0)[1] != []             # at least one val item
    assert train_val_split(items, 0.0, 0) == (items, [])
    with pytest.raises(ConfigError, match="val_fraction"):
        train_val_split(items, 1.0, 0)
    with pytest.raises(InputError, match="cannot give both"):
        train_val_split(items[:1], 0.5, 0)
