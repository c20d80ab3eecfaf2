"""GPT-2 byte-level BPE: known ids, parity with GPT2TokenizerFast, round trips,
folder layouts and error messages. GPT-2's vocabulary is the one bundled with the
package (minipeft/assets/gpt2), so nothing here depends on a folder outside the
repository."""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

import minipeft.tokenizer
from minipeft.errors import CheckpointError, MinipeftError, WeightsNotFoundError
from minipeft.io.paths import HUB_NAMES
from minipeft.tokenizer import GPT2_BPE_DIR, GPT2_BPE_SHA256, load_tokenizer

BPE_DIR = GPT2_BPE_DIR                                   # bundled: every clone has it
ENCODER, VOCAB_BPE = BPE_DIR / "encoder.json", BPE_DIR / "vocab.bpe"
ROOT = Path(__file__).resolve().parents[1]


def repository_text() -> str:
    """A corpus every clone has: the project's own docs and sources (~700 kB of English
    prose, code, tables and a little Unicode), in a fixed order."""
    files = [ROOT / "README.md", ROOT / "DEVELOPERS.md", ROOT / "weights" / "README.md",
             *sorted((ROOT / "minipeft").rglob("*.py"))]
    return "\n".join(f.read_text(encoding="utf-8") for f in files)

TEXTS = [
    "",
    "Hello world",
    "Hello, PEFT!",
    " leading space",
    "trailing spaces   ",
    "runs   of\t\twhite  space \n\n\n  and\r\nCRLF",
    "line one\nline two\n",
    "digits 0 12 345 6789 3.14159 1,000,000",
    "don't won't I'm you're they've we'll she'd IT'S",
    "emoji 😀🎉👍🏽 and 👨‍👩‍👧 family",
    "CJK 你好，世界 日本語のテキスト 한국어",
    "accents: café naïve résumé Ångström façade",
    "before<|endoftext|>after",
    "two docs.<|endoftext|> Second doc<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    "code: def f(x):\n    return x ** 2  # comment",
    "symbols ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./",
    "\x00 control \x07 chars \x7f",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def corpus() -> str:
    return repository_text()


@pytest.fixture(scope="module")
def hf_tok():
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2TokenizerFast(vocab_file=str(ENCODER), merges_file=str(VOCAB_BPE))


def ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text).ids


def random_text(rng: random.Random, length: int) -> str:
    """Code points from every plane, plus ASCII and whitespace, no surrogates."""
    chars = []
    for _ in range(length):
        kind = rng.random()
        if kind < 0.3:
            cp = rng.randint(0x20, 0x7E)
        elif kind < 0.4:
            cp = rng.choice([0x09, 0x0A, 0x0D, 0x20, 0xA0, 0x3000])
        elif kind < 0.7:
            cp = rng.randint(0x80, 0xFFFF)
        else:
            cp = rng.randint(0x10000, 0x10FFFF)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0xFFFD
        chars.append(chr(cp))
    return "".join(chars)


def test_returns_a_real_tokenizer(tok):
    assert type(tok) is Tokenizer
    assert tok.get_vocab_size() == 50257


# --- GPT-2's vocabulary, bundled ----------------------------------------------

@pytest.mark.parametrize("name", HUB_NAMES)
def test_gpt2_names_work_offline_on_a_fresh_clone(tmp_path, monkeypatch, name):
    """The CONTRACT's example: no weights/ folder for the name, no network, any cwd."""
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setenv("MINIPEFT_WEIGHTS", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert load_tokenizer(name).encode("Hello, PEFT!").ids == [15496, 11, 18468, 9792, 0]


def test_gpt2_bundled_files_match_their_readme_and_licence():
    readme = (GPT2_BPE_DIR / "README.md").read_text(encoding="utf-8")
    for name, digest in GPT2_BPE_SHA256.items():
        assert hashlib.sha256((GPT2_BPE_DIR / name).read_bytes()).hexdigest() == digest
        assert f"`{digest}`" in readme and f"`{name}`" in readme
    licence = (GPT2_BPE_DIR / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence and "OpenAI" in licence


def test_gpt2_bundled_files_are_package_data():
    """A non-editable install copies only what pyproject lists: the four files must be."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"\[tool\.setuptools\.package-data\]\n(.*?)(\n\[|\Z)", pyproject, re.S)
    assert section, "pyproject.toml has no [tool.setuptools.package-data]"
    globs = re.search(r'^minipeft\s*=\s*\[(.*?)\]', section.group(1), re.S | re.M).group(1)
    package = GPT2_BPE_DIR.parents[1]
    listed = {p for g in re.findall(r'"([^"]+)"', globs) for p in package.glob(g)}
    for name in ("encoder.json", "vocab.bpe", "LICENSE", "README.md"):
        assert GPT2_BPE_DIR / name in listed, name


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_gpt2_bundled_files_are_checked_on_load(tmp_path, monkeypatch, damage):
    copy = tmp_path / "assets" / "gpt2"       # not ./gpt2: that path would be loaded as a folder
    shutil.copytree(GPT2_BPE_DIR, copy)
    monkeypatch.setattr(minipeft.tokenizer, "GPT2_BPE_DIR", copy)
    monkeypatch.setenv("MINIPEFT_WEIGHTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert load_tokenizer("gpt2").encode("Hello world").ids == [15496, 995]   # the copy is good
    vocab = copy / "encoder.json"
    if damage == "changed":   # one id swapped: still valid JSON, silently wrong ids without the check
        vocab.write_bytes(vocab.read_bytes().replace(b'"Hello": 15496', b'"Hello": 15497'))
        message = _raises(CheckpointError, "does not match its checksum", "gpt2")
    else:
        vocab.unlink()
        message = _raises(WeightsNotFoundError, "cannot be read", "gpt2")
    assert str(vocab) in message and "git checkout minipeft/assets/gpt2" in message


@pytest.mark.parametrize("text, expected", [
    ("Hello world", [15496, 995]),
    ("Hello, PEFT!", [15496, 11, 18468, 9792, 0]),
    ("<|endoftext|>", [50256]),
])
def test_known_ids(tok, text, expected):
    assert ids(tok, text) == expected


def test_endoftext_is_special(tok):
    assert tok.token_to_id("<|endoftext|>") == 50256
    assert ids(tok, "a<|endoftext|>b") == [64, 50256, 65]


def test_space_marker(tok):
    assert tok.encode("Hello world").tokens == ["Hello", "Ġworld"]


@pytest.mark.parametrize("text", TEXTS)
def test_matches_gpt2_tokenizer_fast(tok, hf_tok, text):
    assert ids(tok, text) == hf_tok(text)["input_ids"]


def test_matches_gpt2_tokenizer_fast_on_the_repository_text(tok, hf_tok, corpus):
    rng = random.Random(0)
    for _ in range(5):
        start = rng.randrange(max(1, len(corpus) - 2000))
        piece = corpus[start:start + rng.randint(200, 2000)]
        assert ids(tok, piece) == hf_tok(piece)["input_ids"]


def test_same_pipeline_as_gpt2_tokenizer_fast(tok, hf_tok):
    assert json.loads(tok.to_str()) == json.loads(hf_tok.backend_tokenizer.to_str())


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_fixed(tok, text):
    # Tokenizer.decode drops special tokens by default; keep them for a round trip.
    assert tok.decode(ids(tok, text), skip_special_tokens=False) == text


def test_round_trip_random_unicode(tok):
    rng = random.Random(1234)
    texts = [random_text(rng, rng.randint(1, 60)) for _ in range(200)]
    for text, encoding in zip(texts, tok.encode_batch(texts)):
        assert tok.decode(encoding.ids, skip_special_tokens=False) == text, repr(text)


# --- folder layouts ---------------------------------------------------------

def _hf_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ENCODER, folder / "vocab.json")
    shutil.copy(VOCAB_BPE, folder / "merges.txt")
    return folder


def _openai_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ENCODER, folder / "encoder.json")
    shutil.copy(VOCAB_BPE, folder / "vocab.bpe")
    return folder


def _json_folder(folder: Path, tok: Tokenizer) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_folder_layouts_agree(tok, tmp_path):
    sample = "Layouts agree, don't they? 😀 你好<|endoftext|>\n  end"
    expected = ids(tok, sample)
    folders = [
        _hf_folder(tmp_path / "hf"),
        _openai_folder(tmp_path / "openai"),
        _json_folder(tmp_path / "json", tok),
    ]
    for folder in folders:
        for arg in (folder, str(folder)):
            loaded = load_tokenizer(arg)
            assert ids(loaded, sample) == expected, folder.name
            assert loaded.to_str() == tok.to_str(), folder.name


def test_tokenizer_json_is_preferred(tok, tmp_path):
    folder = _json_folder(tmp_path / "both", tok)
    (folder / "vocab.json").write_text("{not json", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    assert ids(load_tokenizer(folder), "Hello world") == [15496, 995]


def test_merges_without_version_header(tmp_path):
    folder = _hf_folder(tmp_path / "noheader")
    lines = VOCAB_BPE.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version")
    (folder / "merges.txt").write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")
    assert ids(load_tokenizer(folder), "Hello, PEFT!") == [15496, 11, 18468, 9792, 0]


def test_vocab_without_endoftext_gets_it_added(tmp_path):
    folder = _hf_folder(tmp_path / "noeos")
    vocab = json.loads(ENCODER.read_text(encoding="utf-8"))
    del vocab["<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    loaded = load_tokenizer(folder)
    assert loaded.token_to_id("<|endoftext|>") == 50256
    assert ids(loaded, "hi<|endoftext|>") == [5303, 50256]


@pytest.mark.parametrize("name", ["my-gpt2", "gpt2"])
def test_bundled_name(tok, tmp_path, monkeypatch, name):
    weights = tmp_path / "weights"
    folder = _hf_folder(weights / name)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setenv("MINIPEFT_WEIGHTS", str(weights))
    monkeypatch.chdir(tmp_path)  # so the name cannot resolve as a relative path
    assert ids(load_tokenizer(name), "Hello world") == [15496, 995]


# --- errors -----------------------------------------------------------------

def _raises(exc_type, match_substring, arg):
    with pytest.raises(exc_type) as info:
        load_tokenizer(arg)
    assert isinstance(info.value, MinipeftError)
    assert match_substring in str(info.value), str(info.value)
    return str(info.value)


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    message = _raises(WeightsNotFoundError, "does not exist", missing)
    assert str(missing) in message


def test_empty_folder(tmp_path):
    message = _raises(WeightsNotFoundError, "No tokenizer files", tmp_path)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "encoder.json", "vocab.bpe"):
        assert name in message


def test_half_a_file_pair(tmp_path):
    shutil.copy(ENCODER, tmp_path / "vocab.json")
    _raises(WeightsNotFoundError, "Found vocab.json but not merges.txt", tmp_path)


def test_file_instead_of_folder():
    _raises(WeightsNotFoundError, "is a file", ENCODER)


# Every way a JSON file can be malformed, for vocab.json and tokenizer.json alike: one
# error type (CheckpointError) with a sentence naming the file, never a RecursionError,
# a ValueError from int(), a UnicodeDecodeError or the Rust library's bare Exception.
MALFORMED_JSON = {
    "truncated": (b'{"Hello": 15496, "broken', "is not valid JSON"),
    "nested too deep": (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
    "integer too long": (b'{"Hello": ' + b"9" * 5000 + b"}", "integer too long"),
    "NaN": (b'{"Hello": NaN}', "NaN is not JSON"),
    "not UTF-8": ('{"café": 1}'.encode("latin-1"), "is not UTF-8 text"),
    "an array at the top": (b"[1, 2, 3]", "must hold a JSON object"),
    "empty": (b"", "is empty"),
}


@pytest.mark.parametrize("case", MALFORMED_JSON)
def test_malformed_vocab_json(tmp_path, case):
    content, expected = MALFORMED_JSON[case]
    folder = _hf_folder(tmp_path / "bad")
    (folder / "vocab.json").write_bytes(content)
    message = _raises(CheckpointError, expected, folder)
    assert str(folder / "vocab.json") in message and "vocab.json / encoder.json" in message


@pytest.mark.parametrize("case", MALFORMED_JSON)
def test_malformed_tokenizer_json(tmp_path, case):
    content, expected = MALFORMED_JSON[case]
    (tmp_path / "tokenizer.json").write_bytes(content)
    message = _raises(CheckpointError, expected, tmp_path)
    assert str(tmp_path / "tokenizer.json") in message


@pytest.mark.parametrize("values", ['{"Hello": "one"}', '{"Hello": true}', '{"Hello": -1}',
                                    '{"Hello": 1.5}', '{"Hello": 4294967296}'])
def test_vocab_json_of_wrong_values(tmp_path, values):
    folder = _hf_folder(tmp_path / "values")
    (folder / "vocab.json").write_text(values, encoding="utf-8")
    _raises(CheckpointError, "not a JSON object mapping tokens to integer ids", folder)


def test_corrupt_merges(tmp_path):
    folder = _hf_folder(tmp_path / "badmerges")
    (folder / "merges.txt").write_text("#version: 0.2\nthis line has three\n", encoding="utf-8")
    message = _raises(CheckpointError, "Could not build the BPE tokenizer", folder)
    assert "merges.txt" in message


def test_tokenizer_json_that_tokenizers_cannot_read(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}', encoding="utf-8")
    message = _raises(CheckpointError, "Could not read", tmp_path)
    assert "tokenizer.json" in message


def test_gpt2_model_folder_without_tokenizer_files_uses_the_bundled_one(tmp_path, monkeypatch):
    """A converted weights/gpt2/ that holds only config.json + weights still has a tokenizer."""
    weights = tmp_path / "weights"
    (weights / "gpt2").mkdir(parents=True)
    (weights / "gpt2" / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setenv("MINIPEFT_WEIGHTS", str(weights))
    monkeypatch.chdir(tmp_path)
    assert ids(load_tokenizer("gpt2"), "Hello world") == [15496, 995]


def test_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIPEFT_WEIGHTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    message = _raises(WeightsNotFoundError, "not a bundled model name", "no-such-model")
    assert "gpt2" in message


# --- training a byte-level BPE of our own -----------------------------------

from minipeft.errors import ConfigError, InputError  # noqa: E402
from minipeft.tokenizer import save_tokenizer, train_bpe_tokenizer  # noqa: E402

SMALL_VOCAB = 512


@pytest.fixture(scope="module")
def small_tok(corpus) -> Tokenizer:
    return train_bpe_tokenizer(corpus[:100_000], SMALL_VOCAB)   # 100 kB: well under a second


def test_trained_vocab_size_and_eos_last(small_tok):
    assert small_tok.get_vocab_size() == SMALL_VOCAB
    assert small_tok.token_to_id("<|endoftext|>") == SMALL_VOCAB - 1
    a, b = small_tok.token_to_id("a"), small_tok.token_to_id("b")
    assert ids(small_tok, "a<|endoftext|>b") == [a, SMALL_VOCAB - 1, b]
    assert ids(small_tok, "<|endoftext|>") == [SMALL_VOCAB - 1]


def test_trained_bytes_have_gpt2_ids(small_tok, tok):
    # ids 0-255 are the 256 bytes in GPT-2's order, so they mean what they mean in GPT-2
    assert [small_tok.id_to_token(i) for i in range(256)] == [tok.id_to_token(i) for i in range(256)]


def test_trained_round_trip_unseen_text(small_tok, corpus):
    rng = random.Random(0)
    for _ in range(5):   # pieces from the whole corpus, most of it unseen in training
        start = rng.randrange(len(corpus) - 3000)
        piece = corpus[start:start + 3000]
        encoded = ids(small_tok, piece)
        assert small_tok.decode(encoded, skip_special_tokens=False) == piece
        assert len(encoded) < 0.6 * len(piece)   # the merges are used: fewer tokens than bytes


@pytest.mark.parametrize("text", TEXTS)
def test_trained_round_trip_any_text(small_tok, text):
    # byte-level: text the tokenizer never saw (emoji, CJK, control bytes) round-trips too
    assert small_tok.decode(ids(small_tok, text), skip_special_tokens=False) == text


def test_trained_pipeline_is_gpt2s(small_tok, tok):
    ours, gpt2 = json.loads(small_tok.to_str()), json.loads(tok.to_str())
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert ours[part] == gpt2[part], part
    assert {k: v for k, v in ours["model"].items() if k not in ("vocab", "merges")} == \
           {k: v for k, v in gpt2["model"].items() if k not in ("vocab", "merges")}
    assert [t["content"] for t in ours["added_tokens"]] == ["<|endoftext|>"]


def test_training_is_deterministic(small_tok, corpus):
    again = train_bpe_tokenizer(corpus[:100_000], SMALL_VOCAB)
    assert again.to_str() == small_tok.to_str()


def test_training_from_files_equals_from_text(small_tok, corpus, tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(corpus[:100_000], encoding="utf-8")
    assert train_bpe_tokenizer([first], SMALL_VOCAB).to_str() == small_tok.to_str()
    assert train_bpe_tokenizer(first, SMALL_VOCAB).to_str() == small_tok.to_str()
    second.write_text(corpus[100_000:150_000], encoding="utf-8")
    assert train_bpe_tokenizer([first, str(second)], SMALL_VOCAB).get_vocab_size() == SMALL_VOCAB


def test_endoftext_in_training_text_is_not_learned():
    text = "hello world<|endoftext|>" * 200
    trained = train_bpe_tokenizer(text, 262)
    learned = [trained.id_to_token(i) for i in range(256, 261)]
    assert not any("<" in t or "|" in t for t in learned), learned


def test_save_and_load_trained(small_tok, tmp_path):
    file = save_tokenizer(small_tok, tmp_path / "new" / "folder")
    assert file == tmp_path / "new" / "folder" / "tokenizer.json" and file.is_file()
    assert sorted(p.name for p in file.parent.iterdir()) == ["tokenizer.json"]
    loaded = load_tokenizer(file.parent)
    assert loaded.to_str() == small_tok.to_str()
    sample = "ROMEO:\nBut soft, what light?<|endoftext|>"
    assert ids(loaded, sample) == ids(small_tok, sample)


def test_train_errors(tmp_path):
    with pytest.raises(ConfigError, match="at least 257"):
        train_bpe_tokenizer("some text", 256)
    with pytest.raises(InputError, match="fewer than vocab_size=5000"):
        train_bpe_tokenizer("a small text, a small text", 5000)
    with pytest.raises(InputError, match="No text file at"):
        train_bpe_tokenizer([tmp_path / "missing.txt"], 300)
    with pytest.raises(InputError, match="no text"):
        train_bpe_tokenizer("", 300)
    with pytest.raises(InputError, match="the text to train the tokenizer on is not UTF-8 text: "
                                         "character 5 is the byte 0xe9"):
        train_bpe_tokenizer("Ophel\udce9" * 100, 300)          # bytes read with surrogateescape
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder", encoding="utf-8")
    with pytest.raises(InputError, match="is a file"):
        save_tokenizer(load_tokenizer(BPE_DIR), a_file)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first line\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt, line 2: not UTF-8 text \(byte 0xe9 at column 4\)"):
        train_bpe_tokenizer([latin1], 300)
