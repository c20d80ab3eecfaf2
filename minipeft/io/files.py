"""The text and the folders a user names: read text as UTF-8, check a folder to write.

Three kinds of user input end in an errno or a traceback when taken as they come:
a text file that is not UTF-8 (``UnicodeDecodeError``), a command-line argument
holding bytes that are not UTF-8 (Python keeps them as lone surrogates, which the
tokenizer refuses with ``UnicodeEncodeError``), and an output path that is an
existing *file* (``[Errno 17] File exists`` or ``[Errno 20] Not a directory``).
Every reader and command goes through these three functions instead, so each
becomes one sentence: where it is, what is wrong, what to do.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, MinipeftError


def read_text(path: str | os.PathLike[str], *, what: str = "text file",
              error: type[MinipeftError] = InputError, fix: str = "") -> str:
    """The UTF-8 text of the file ``path`` (a leading byte-order mark dropped), or
    ``error`` saying why not: missing, a folder, unreadable, or which line holds
    which byte that is not UTF-8. ``what`` names the file in the message."""
    path = Path(path)
    fix = f" {fix}" if fix else ""
    if not path.is_file():
        why = "is a folder" if path.is_dir() else \
            "is not a regular file" if path.exists() else "does not exist"
        raise error(f"{path} {why}; expected a {what}.{fix}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"Cannot read {path}: {e.strerror or e}.{fix}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line, column = data.count(b"\n", 0, start) + 1, start - data.rfind(b"\n", 0, start)
        raise error(f"{path}, line {line}: not UTF-8 text (byte 0x{data[start]:02x} at column "
                    f"{column}); save the {what} as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
                    f"{fix}") from None


def check_text(text: str, what: str, error: type[MinipeftError] = InputError) -> str:
    """``text`` itself if it is valid Unicode; else ``error``. A ``str`` can hold lone
    surrogates: the bytes of a command-line argument that were not UTF-8 (Python's
    surrogateescape), or a ``"\\udcff"`` escape in JSON. No tokenizer takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        byte = f"the byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF \
            else f"a lone surrogate U+{ord(bad):04X}"
        raise error(f"{what} is not UTF-8 text: character {e.start} is {byte}. Give the "
                    "text in UTF-8 (set your terminal or file to UTF-8).") from None
    return text


def check_output_folder(path: str | os.PathLike[str], what: str = "the output folder",
                        error: type[MinipeftError] = InputError) -> Path:
    """``Path(path)`` if it is a folder or can become one; ``error`` if it, or a
    folder above it, is an existing file (a save would fail there with an errno)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{what} {path} is a file, not a folder; give the path of a folder to "
                    "write into (it is created if it does not exist).")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise error(f"{what} {path} cannot be created: {parent} is a file, not a "
                            "folder. Give a path under an existing folder.")
            break
    return path
