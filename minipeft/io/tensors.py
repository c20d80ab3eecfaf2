"""Reading weight files as data: safetensors (any dtype NumPy holds, bfloat16 by hand) and
PyTorch's ``.bin`` (with ``weights_only=True``, needs torch).

Every way a file can be bad is a CheckpointError that says what to do: a header that
does not parse, tensors of a dtype NumPy cannot hold (float8, float4: refused by name),
a pickle under a safetensors name (never unpickled). NaN or infinite values are a
warning naming the tensor. Used by checkpoint.py (GPT-2 folders), peft/io.py (adapters)
and the Trainer (its checkpoints).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ..errors import CheckpointError
from .jsonfile import parse_json

# safetensors dtypes NumPy holds (BF16 read by hand below); the others (F8_E4M3, F8_E5M2,
# F8_E8M0, F6_*, F4, ...) are refused by name.
READABLE_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16",
                   "U8", "BOOL"}
MAX_HEADER_BYTES = 100 << 20        # safetensors' own limit on the JSON header


def _safetensors_header(path: Path) -> dict | None:
    """The JSON header of a safetensors file, or None where it does not even parse
    (then safetensors itself says what is wrong).

    The layout: 8 bytes little-endian header size, a JSON header {name: {dtype, shape,
    data_offsets}}, then the raw data."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= min(MAX_HEADER_BYTES, os.fstat(f.fileno()).st_size - 8):
                return None
            raw = f.read(n)
        header = parse_json(raw, f"{path}'s header", error=CheckpointError)
    except (OSError, CheckpointError):
        return None
    return header


def _refuse_unreadable_dtypes(path: Path, header: dict | None) -> None:
    odd = {name: info.get("dtype") for name, info in (header or {}).items()
           if name != "__metadata__" and isinstance(info, dict)
           and isinstance(info.get("dtype"), str) and info["dtype"] not in READABLE_DTYPES}
    if odd:
        name, dtype = next(iter(odd.items()))
        more = f" (and {len(odd) - 1} more tensor(s))" if len(odd) > 1 else ""
        raise CheckpointError(
            f"{path}: tensor {name} has dtype {dtype}{more}, an 8-bit or smaller float that "
            "NumPy cannot hold and minipeft does not read. Save the weights in float32, float16 "
            "or bfloat16 (e.g. model.to(torch.float32).save_pretrained(...)).")


def warn_non_finite(tensors: dict, source) -> None:
    """A warning naming the float tensors that hold NaN or infinite values: such a model
    loads, then generates nonsense (often one token forever)."""
    bad = [(k, int(np.size(v) - np.count_nonzero(np.isfinite(v)))) for k, v in tensors.items()
           if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        names = ", ".join(f"{k} ({n:,} of {np.size(tensors[k]):,} values)" for k, n in bad[:3])
        more = f" and {len(bad) - 3} more tensor(s)" if len(bad) > 3 else ""
        warnings.warn(f"{source}: NaN or infinite weights in {names}{more}. A model with them "
                      "computes NaN logits and generates nonsense (often token 0 forever). Load an "
                      "earlier copy, or train again with a lower learning rate or max_grad_norm.",
                      RuntimeWarning, stacklevel=3)


def _read_bfloat16_safetensors(path: Path, header: dict) -> dict:
    """safetensors read by hand, for the one dtype NumPy lacks: bfloat16 (the top half
    of a float32)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    kinds = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[8 + n + start: 8 + n + end]
        if info["dtype"] == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, kinds[info["dtype"]])
        out[name] = a.reshape(info["shape"])
    return out


def read_safetensors(path: Path) -> dict:
    """{name: array} of a safetensors file; every way it can be bad is a CheckpointError,
    and NaN/inf values a warning."""
    out = _read_safetensors_unchecked(path)
    warn_non_finite(out, path)
    return out


def _read_safetensors_unchecked(path: Path) -> dict:
    header = _safetensors_header(path)
    _refuse_unreadable_dtypes(path, header)
    try:
        try:
            return load_file(str(path))
        except TypeError as e:
            if "bfloat16" not in str(e) or header is None:
                raise
            return _read_bfloat16_safetensors(path, header)
    except (SafetensorError, OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        pickled = _looks_pickled(path)
        raise CheckpointError(
            f"Cannot read {path}: {e}. The file is corrupt, truncated or not safetensors; "
            "convert or download it again." + (
                " It looks like a pickle (torch.save), which minipeft never loads under a "
                "safetensors name (unpickling can run code): save it with safetensors "
                "(safe_serialization=True) or `minipeft convert` its original folder."
                if pickled else "")) from None


def _looks_pickled(path: Path) -> bool:
    """Does the file start as a pickle (protocol 2-5) or a torch.save zip archive does?
    (A safetensors file starts with its header's length, then "{" at byte 8.)"""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    return (pickle or head[:4] == b"PK\x03\x04") and head[8:9] != b"{"


def read_bin(path: Path) -> dict:
    """{name: array} of a PyTorch state dict (float tensors as float32), read with
    ``weights_only=True``: nothing but tensors is unpickled."""
    try:
        import torch  # optional: only pytorch_model.bin needs it
    except ImportError:
        raise CheckpointError(
            f"{path} is a PyTorch pickle, and reading it needs torch (pip install torch). "
            "Or convert it on a machine with torch: `minipeft convert SRC DST`, which "
            "writes safetensors.") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:              # torch raises many types for a bad pickle
        raise CheckpointError(
            f"Cannot read {path} safely (weights_only=True): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. minipeft never unpickles "
            "arbitrary objects; use a safetensors checkpoint.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"{path} holds {odd[0]!r}, which is not a tensor: it is not a model "
                              "state dict. Give the model's weights file (save_pretrained's).")
    out = {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
           for k, v in state.items()}
    warn_non_finite(out, path)
    return out
