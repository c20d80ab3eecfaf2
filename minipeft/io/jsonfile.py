"""One reader for every JSON a user or a file can hand to minipeft.

Configs, adapter configs, checksums, shard indexes, trainer states and JSONL lines
all go through :func:`parse_json` / :func:`read_json`, so that whatever a malformed
file does (nesting that overflows the parser's stack, an integer of a million
digits, ``NaN`` where JSON has no such thing, bytes that are not UTF-8, the wrong
type at the top) ends as one error type with one kind of sentence: where it is,
what is wrong, what to do. Python's ``json`` raises five different exceptions for
these (``JSONDecodeError``, ``RecursionError``, ``ValueError``, ``UnicodeDecodeError``,
``OSError``); none of them reaches the user.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MinipeftError

MAX_JSON_BYTES = 64 << 20        # no config, index or state minipeft writes comes near 64 MiB
_TYPES = {dict: "a JSON object ({...})", list: "a JSON array ([...])", str: "a string",
          int: "an integer", float: "a number", bool: "true/false", type(None): "null"}


def _type_name(obj) -> str:
    return _TYPES.get(type(obj), type(obj).__name__)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON (JSON has no NaN or Infinity)")


def parse_json(text: str | bytes, source: str, *, expect: type | None = dict,
               error: type[MinipeftError] = MinipeftError, fix: str = "") -> object:
    """``text`` -> the JSON value, or ``error`` saying what is wrong with ``source``.

    ``expect`` is the type the top level must have (None: any); ``fix`` is the
    sentence that says what to do, appended to every message."""
    fix = f" {fix}" if fix else ""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{source} is not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x})"
                        f"; JSON files are UTF-8.{fix}") from None
    if not text.strip():
        raise error(f"{source} is empty; it should hold {_TYPES.get(expect, 'JSON')}.{fix}")
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:        # one line (a JSONL line): its column says where
        at = f"column {e.colno}" if "\n" not in text else f"line {e.lineno}, column {e.colno}"
        raise error(f"{source} is not valid JSON: {e.msg} at {at}.{fix}") from None
    except RecursionError:
        raise error(f"{source} nests JSON too deeply to read; it is not a file minipeft or "
                    f"peft wrote.{fix}") from None
    except ValueError as e:       # NaN/Infinity, an integer longer than Python converts
        why = "it holds an integer too long to read (over 4300 digits)" \
            if "integer string conversion" in str(e) else str(e).splitlines()[0]
        raise error(f"{source} is not valid JSON: {why}.{fix}") from None
    if expect is not None and not isinstance(obj, expect):
        raise error(f"{source} must hold {_TYPES.get(expect, expect.__name__)} at the top, "
                    f"got {_type_name(obj)}.{fix}")
    return obj


def read_json(path: str | Path, *, expect: type | None = dict,
              error: type[MinipeftError] = MinipeftError, fix: str = "") -> object:
    """Read and parse the JSON file ``path`` (see :func:`parse_json`); a file that is
    missing, a folder, a device or larger than ``MAX_JSON_BYTES`` is the same ``error``."""
    path = Path(path)
    try:
        if not path.is_file():
            what = "is a folder" if path.is_dir() else \
                "is not a regular file" if path.exists() else "does not exist"
            raise error(f"{path} {what}; expected a JSON file.{f' {fix}' if fix else ''}")
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{path} is {size:,} bytes; no JSON file minipeft reads is larger than "
                        f"{MAX_JSON_BYTES:,}.{f' {fix}' if fix else ''}")
        data = path.read_bytes()
    except OSError as e:
        raise error(f"Cannot read {path}: {e.strerror or e}.{f' {fix}' if fix else ''}") from None
    return parse_json(data, str(path), expect=expect, error=error, fix=fix)


json_type_name = _type_name          # 'a JSON object', 'a string', … for messages elsewhere
