"""GPT-2's tokenizer: byte-level BPE, built with Hugging Face ``tokenizers``.

Byte-pair encoding starts from single symbols and repeatedly glues together the
pair listed earliest in ``merges.txt``; ``vocab.json`` then maps each resulting
piece to an id. GPT-2 runs BPE over the UTF-8 *bytes* of the text, not over
characters, so its 256 base symbols cover every possible string: there is no
unknown token and decoding gives back exactly the text that was encoded. To keep
the files printable, each byte is written as a visible Unicode character; the
space byte becomes ``Ġ``, so ``"Ġworld"`` is "world" with its leading space. A
regex first splits text into words, numbers, punctuation and whitespace runs, and
merges never cross those pieces. ``<|endoftext|>`` (id 50256, the last id of the
50257-entry vocabulary) is a special token, matched before any splitting.

``load_tokenizer`` returns the same pipeline as ``transformers.GPT2TokenizerFast``.
Note that ``Tokenizer.decode`` skips special tokens unless you pass
``skip_special_tokens=False``.

GPT-2's own files ship with the package (``minipeft/assets/gpt2/``, with their
licence and provenance): ``load_tokenizer("gpt2")`` works offline, and checks the
files' sha256 on every load.

``train_bpe_tokenizer`` learns a smaller vocabulary of the same kind from your own
text (for pretraining a tiny GPT-2), and ``save_tokenizer`` writes it as
``tokenizer.json``, which ``load_tokenizer`` reads back.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from minipeft.errors import CheckpointError, ConfigError, InputError, WeightsNotFoundError
from minipeft.io.files import check_text, read_text
from minipeft.io.jsonfile import read_json
from minipeft.io.paths import HUB_NAMES, bundled_dir, bundled_names

EOS_TOKEN = "<|endoftext|>"
EOS_ID = 50256  # in GPT-2's own vocabulary

# The file sets a tokenizer folder may hold, in order of preference.
BPE_FILE_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
TOKENIZER_JSON = "tokenizer.json"

# GPT-2's vocabulary, bundled (package data), shared by every name in HUB_NAMES;
# the sha256 are those of minipeft/assets/gpt2/README.md, checked on every load.
GPT2_BPE_DIR = Path(__file__).resolve().parent / "assets" / "gpt2"
GPT2_BPE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def load_tokenizer(path_or_name: str | os.PathLike[str]) -> Tokenizer:
    """Load GPT-2's byte-level BPE tokenizer from a folder or a bundled model name.

    The folder may hold ``tokenizer.json``, or ``vocab.json`` + ``merges.txt``
    (Hugging Face layout), or ``encoder.json`` + ``vocab.bpe`` (OpenAI's
    originals); they are tried in that order. A string that is not an existing
    path is looked up as a bundled name (``weights/<name>/``); GPT-2's names
    (``"gpt2"``, ``"gpt2-medium"``, ..., ``"distilgpt2"``) fall back to GPT-2's
    vocabulary bundled with the package, checked against its sha256.
    """
    if isinstance(path_or_name, str) and path_or_name in HUB_NAMES \
            and not Path(path_or_name).exists():
        folder = bundled_dir(path_or_name)
        if folder is None or not _has_tokenizer_files(folder):
            return build_gpt2_tokenizer(*gpt2_bpe_files())
    folder = _resolve_folder(path_or_name)
    if (folder / TOKENIZER_JSON).is_file():
        return _from_tokenizer_json(folder / TOKENIZER_JSON)
    for vocab_name, merges_name in BPE_FILE_PAIRS:
        vocab, merges = folder / vocab_name, folder / merges_name
        if vocab.is_file() and merges.is_file():
            return build_gpt2_tokenizer(vocab, merges)
    raise WeightsNotFoundError(_missing_files_message(folder))


def gpt2_bpe_files() -> tuple[Path, Path]:
    """The bundled ``(encoder.json, vocab.bpe)`` of GPT-2, after checking their sha256."""
    files = tuple(GPT2_BPE_DIR / name for name in GPT2_BPE_SHA256)
    for file, expected in zip(files, GPT2_BPE_SHA256.values()):
        try:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
        except OSError as exc:
            raise WeightsNotFoundError(
                f"GPT-2's bundled vocabulary file {file} cannot be read ({exc.strerror or exc}); "
                "the installation is incomplete: reinstall minipeft (pip install -e .) or "
                "restore the folder with `git checkout minipeft/assets/gpt2`.") from None
        if digest != expected:
            raise CheckpointError(
                f"GPT-2's bundled vocabulary file {file} does not match its checksum (sha256 "
                f"{digest[:12]}…, expected {expected[:12]}…): it was changed or damaged. "
                "Restore it with `git checkout minipeft/assets/gpt2` or reinstall minipeft.")
    return files


def build_gpt2_tokenizer(vocab_file: str | os.PathLike[str],
                         merges_file: str | os.PathLike[str]) -> Tokenizer:
    """GPT-2's tokenizer from a vocabulary JSON and a merges file.

    Matches the pipeline of ``GPT2TokenizerFast``: no normalizer, byte-level
    pre-tokenizer (no prefix space), BPE, byte-level post-processor and decoder.
    """
    vocab_file, merges_file = Path(vocab_file), Path(merges_file)
    _check_vocab(vocab_file)  # so a bad file is named precisely
    try:
        # from_file skips the "#version: 0.2" header line of the merges file.
        # The empty affixes are what GPT2TokenizerFast sets (None acts the same).
        model = BPE.from_file(str(vocab_file), str(merges_file),
                              continuing_subword_prefix="", end_of_word_suffix="")
    except Exception as exc:  # tokenizers raises a bare Exception
        culprit = merges_file if "Merges" in str(exc) else f"{vocab_file} / {merges_file}"
        raise CheckpointError(
            f"Could not build the BPE tokenizer from {culprit}: {exc}. The files may "
            "be corrupt or not belong together; re-download GPT-2's vocab.json and "
            "merges.txt (or encoder.json and vocab.bpe)."
        ) from exc

    return _gpt2_pipeline(model)


def _gpt2_pipeline(model: BPE) -> Tokenizer:
    """Wrap a BPE model in GPT2TokenizerFast's pipeline, with <|endoftext|> special."""
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Changes offsets only, never ids; trim_offsets=False as in GPT2TokenizerFast.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # Registering the token (already id 50256 in GPT-2's vocab) makes it match
    # as one piece; a vocabulary without it gets it appended as a new id.
    tokenizer.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=True)])
    return tokenizer


def train_bpe_tokenizer(text: str | os.PathLike[str] | list[str | os.PathLike[str]],
                        vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Learn a byte-level BPE of ``vocab_size`` tokens, laid out like GPT-2's.

    ``text`` is the training text itself (a ``str``), or a path / list of paths to
    UTF-8 text files. The result has GPT-2's pipeline and id layout: ids 0-255 are
    the 256 bytes in GPT-2's order (so they equal GPT-2's own first 256 ids), then
    the learned tokens in the order they were merged (the most frequent pair is
    merged first), and ``<|endoftext|>`` last, at ``vocab_size - 1`` (GPT-2's
    50256). A pair is merged only if it occurs at least ``min_frequency`` times.
    The same text and settings give the same tokenizer, in any process.
    """
    if not isinstance(vocab_size, int) or vocab_size < 257:
        raise ConfigError(f"vocab_size={vocab_size!r}: a byte-level BPE needs at least 257 "
                          "tokens (256 bytes + <|endoftext|>); pass a larger vocab_size.")
    # Learn merges on exactly the pieces encode() will see: encode() first cuts the
    # text at each <|endoftext|> (which the trainer would otherwise learn as
    # "<|", "endoftext", ...), then pre-tokenizes each piece. Pieces are fed whole:
    # splitting them into lines would change how runs of newlines are pre-tokenized.
    texts = [piece for t in _training_texts(text) for piece in t.split(EOS_TOKEN) if piece]
    draft = Tokenizer(BPE())
    draft.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency,
                                  show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    draft.train_from_iterator(texts, trainer)
    learned = json.loads(draft.to_str())["model"]
    if len(learned["vocab"]) < vocab_size - 1:
        raise InputError(
            f"The text gives only {len(learned['vocab']) + 1} tokens with min_frequency="
            f"{min_frequency}, fewer than vocab_size={vocab_size}: pass a smaller "
            "vocab_size, a lower min_frequency, or more text."
        )
    # The trainer orders the bytes by code point; put them in GPT-2's order, keep
    # the learned tokens in the order they were made, and give EOS the last id.
    byte_order = _byte_symbols()
    is_byte = set(byte_order)
    learned_tokens = sorted((i, t) for t, i in learned["vocab"].items() if t not in is_byte)
    tokens = byte_order + [t for _, t in learned_tokens] + [EOS_TOKEN]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    model = BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                continuing_subword_prefix="", end_of_word_suffix="")
    return _gpt2_pipeline(model)


def save_tokenizer(tokenizer: Tokenizer, folder: str | os.PathLike[str]) -> Path:
    """Write ``tokenizer`` to ``folder/tokenizer.json`` (creating the folder); return the file.

    ``load_tokenizer(folder)`` gives it back unchanged. The file is written to a
    temporary name first, so an interrupted save never leaves half a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; save_tokenizer needs a folder to write "
                         f"{TOKENIZER_JSON} into.")
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / TOKENIZER_JSON
    partial = folder / (TOKENIZER_JSON + ".partial")
    tokenizer.save(str(partial))
    os.replace(partial, file)
    return file


def _training_texts(text) -> list[str]:
    """The texts to train on: ``text`` itself, or the contents of the file(s) it names."""
    if isinstance(text, str):
        texts = [check_text(text, "the text to train the tokenizer on")]   # no lone surrogates
    else:
        paths = [text] if isinstance(text, os.PathLike) else list(text)
        texts = []
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise InputError(f"No text file at {path}: train_bpe_tokenizer takes the text "
                                 "itself as a str, or a list of paths to existing text files.")
            texts.append(read_text(path, what="text file to train the tokenizer on"))
    if not any(texts):
        raise InputError("train_bpe_tokenizer got no text to learn from.")
    return texts


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte, in GPT-2's id order.

    Bytes that are printable characters stand for themselves (``!`` to ``~``,
    ``¡`` to ``¬``, ``®`` to ``ÿ``) and come first; the other 68 bytes (space,
    control characters, ...) are mapped, in byte order, to code points 256 and up,
    so the space byte 32 becomes ``Ġ`` (U+0120).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def _resolve_folder(path_or_name: str | os.PathLike[str]) -> Path:
    """The folder to read: an existing path, else a bundled model's folder."""
    path = Path(path_or_name)
    if path.exists():
        if not path.is_dir():
            raise WeightsNotFoundError(
                f"{path} is a file; load_tokenizer expects the folder that holds "
                f"{TOKENIZER_JSON}, vocab.json + merges.txt, or encoder.json + vocab.bpe."
            )
        return path
    if isinstance(path_or_name, str):
        folder = bundled_dir(path_or_name)
        if folder is not None:
            return folder
    raise WeightsNotFoundError(
        f"Tokenizer path {str(path)!r} does not exist and is not a bundled model name. "
        "Check the path, or pass a folder holding vocab.json + merges.txt or "
        f"encoder.json + vocab.bpe. Names that work offline: "
        f"{', '.join([*bundled_names(), *HUB_NAMES])}."
    )


def _from_tokenizer_json(file: Path) -> Tokenizer:
    obj = read_json(file, expect=dict, error=CheckpointError,
                    fix="It should be a Hugging Face tokenizers file; delete it or replace it "
                        "with a good copy.")
    try:
        return Tokenizer.from_str(json.dumps(obj))
    except Exception as exc:  # valid JSON, but not a pipeline tokenizers knows
        raise CheckpointError(
            f"Could not read {file}: {exc}. The file is corrupt or not a Hugging Face "
            "tokenizers file; delete it or replace it with a good copy."
        ) from None


def _check_vocab(file: Path) -> None:
    """Read and check a token -> id JSON map, naming the file on any problem."""
    fix = "Replace it with a good copy of GPT-2's vocab.json / encoder.json."
    vocab = read_json(file, expect=dict, error=CheckpointError,
                      fix=f"It should be the vocabulary, a JSON object mapping tokens to ids. {fix}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32
               for v in vocab.values()):
        raise CheckpointError(
            f"The vocabulary {file} is not a JSON object mapping tokens to integer ids "
            f"(0 <= id < 2^32). {fix}"
        )


def _has_tokenizer_files(folder: Path) -> bool:
    return (folder / TOKENIZER_JSON).is_file() or any(
        (folder / v).is_file() and (folder / m).is_file() for v, m in BPE_FILE_PAIRS)


def _missing_files_message(folder: Path) -> str:
    looked_for = [TOKENIZER_JSON] + [f"{v} + {m}" for v, m in BPE_FILE_PAIRS]
    message = f"No tokenizer files in {folder}: looked for {', or '.join(looked_for)}."
    for pair in BPE_FILE_PAIRS:
        present = [name for name in pair if (folder / name).is_file()]
        if len(present) == 1:
            missing = next(name for name in pair if name not in present)
            message += f" Found {present[0]} but not {missing}."
    return message + " Copy GPT-2's tokenizer files into that folder."
