"""Reading Hugging Face GPT-2 folders and writing minipeft's converted ones.

A converted folder is itself a clean Hugging Face GPT-2 folder: ``config.json``
(GPT2Config keys) and ``model.safetensors`` (float32, `GPT2LMHeadModel` names,
no tied ``lm_head.weight`` and no causal-mask buffers). So ``transformers`` can
load it too, and minipeft reads it with ``safetensors`` alone, without torch.

Hugging Face folders come in more flavours, all accepted here: keys with or
without the ``transformer.`` prefix (the hub's gpt2 has none), ``attn.bias`` /
``attn.masked_bias`` buffers, float16 and bfloat16 weights, ``pytorch_model.bin`` (needs
torch, read with ``weights_only=True``) and sharded safetensors.

Every file is read as data and checked before use: a name read from a file (the shard
index, checksums.json) must name a regular file inside the folder (``paths.file_in_folder``),
every JSON goes through ``jsonfile.read_json``, tensors of a dtype NumPy cannot hold
(float8, float4) are refused by name, and NaN or infinite weights are reported with a
warning naming the tensor. Reading one weights file is in ``tensors.py``, writing in
``atomic.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import safetensors.numpy  # save_file read at each save, so a test can make it fail

from ..config import GPT2Config
from ..errors import CheckpointError, MinipeftError, WeightsNotFoundError
from .atomic import atomic_save, read_dir
from .hub import download
from .jsonfile import read_json
from .paths import HUB_NAMES, bundled_dir, bundled_names, file_in_folder, weights_dir
from .tensors import read_bin, read_safetensors

FORMAT_VERSION = 1


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter of GPT2LMHeadModel (lm_head tied, so absent) with its shape."""
    C, V, P, F = config.n_embd, config.vocab_size, config.n_positions, config.inner_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C)}
    for i in range(config.n_layer):
        h = f"transformer.h.{i}"
        shapes.update({
            f"{h}.ln_1.weight": (C,), f"{h}.ln_1.bias": (C,),
            f"{h}.attn.c_attn.weight": (C, 3 * C), f"{h}.attn.c_attn.bias": (3 * C,),
            f"{h}.attn.c_proj.weight": (C, C), f"{h}.attn.c_proj.bias": (C,),
            f"{h}.ln_2.weight": (C,), f"{h}.ln_2.bias": (C,),
            f"{h}.mlp.c_fc.weight": (C, F), f"{h}.mlp.c_fc.bias": (F,),
            f"{h}.mlp.c_proj.weight": (F, C), f"{h}.mlp.c_proj.bias": (C,),
        })
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    return shapes


def check_params(params: dict, config: GPT2Config, source: str) -> None:
    """Loud shape check, as nanoGPT's from_pretrained: every tensor, by name."""
    shapes = expected_shapes(config)
    missing = [k for k in shapes if k not in params]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(
            f"{source} is missing {len(missing)} tensor(s) that a GPT-2 with n_layer="
            f"{config.n_layer} needs: {', '.join(missing[:5])}{more}. The checkpoint is "
            "incomplete or belongs to another model; convert the original folder again.")
    unexpected = [k for k in params if k not in shapes]
    if unexpected:
        raise CheckpointError(
            f"{source} has tensor(s) that GPT-2 with this config does not have: "
            f"{', '.join(unexpected[:5])}. Is config.json (n_layer={config.n_layer}) the one "
            "that belongs to these weights?")
    for k, shape in shapes.items():
        if tuple(params[k].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {k} has shape {tuple(params[k].shape)}, but config.json "
                f"(n_embd={config.n_embd}, vocab_size={config.vocab_size}, n_positions="
                f"{config.n_positions}) needs {shape}. The weights and config do not match.")


def normalize_names(raw: dict, source: str) -> dict:
    """Hugging Face key variants -> GPT2LMHeadModel names; drops tied/buffer tensors."""
    params = {}
    for key, value in raw.items():
        if key == "lm_head.weight" or key.endswith((".attn.bias", ".attn.masked_bias")):
            continue                        # tied to wte / causal-mask buffers
        name = key if key.startswith("transformer.") else "transformer." + key
        if name in params:
            raise CheckpointError(f"{source} holds {key} twice (with and without 'transformer.').")
        params[name] = value
    return params


def _to_float32(name, array, source):
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise CheckpointError(
            f"{source}: tensor {name} has dtype {array.dtype}; GPT-2 weights are floats. The "
            "file is not a GPT-2 checkpoint; convert or download the original folder again.")
    return np.ascontiguousarray(array, dtype=np.float32)


def _weight_files(folder: Path) -> tuple[str, list[Path]]:
    single = folder / "model.safetensors"
    if single.is_file():
        return "safetensors", [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        fix = "Restore the folder or download it again."
        weight_map = read_json(index, error=CheckpointError, fix=fix).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no \"weight_map\" object of tensor -> shard file. "
                                  f"{fix}")
        shards = list(dict.fromkeys(weight_map.values()))
        return "safetensors", [file_in_folder(folder, s, str(index), missing=WeightsNotFoundError,
                                              what="Shard", where="the index")
                               for s in shards]
    binary = folder / "pytorch_model.bin"
    if binary.is_file():
        return "bin", [binary]
    raise WeightsNotFoundError(
        f"{folder} has no weights: expected model.safetensors (or a sharded "
        "model.safetensors.index.json) or pytorch_model.bin beside config.json.")


CHECKSUMS_NAME = "checksums.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: Path) -> None:
    """checksums.json: sha256 of the weights and the tokenizer, checked on every load.
    (``folder`` is a save's private temp folder.)"""
    sums = {name: sha256_file(folder / name) for name in ("model.safetensors", "tokenizer.json")
            if (folder / name).is_file()}
    (folder / CHECKSUMS_NAME).write_text(json.dumps(sums, indent=2) + "\n")


def verify_checksums(folder: Path) -> None:
    """A folder with checksums.json (the bundled models) must match it byte for byte."""
    path = folder / CHECKSUMS_NAME
    if not path.is_file():
        return
    fix = "Restore it (git checkout -- weights/) or delete it to skip the check."
    sums = read_json(path, error=CheckpointError, fix=fix)
    for name, expected in sums.items():
        if not isinstance(expected, str):
            raise CheckpointError(f"{path}: the checksum of {name!r} must be a string of 64 hex "
                                  f"digits, got {expected!r}. {fix}")
        real = file_in_folder(folder, name, str(path))
        try:
            actual = sha256_file(real)
        except OSError as e:
            raise CheckpointError(f"{folder / name}, listed in {path.name}, cannot be read: {e}. "
                                  "Restore the folder or make it again.") from None
        if actual != expected:
            raise CheckpointError(
                f"{folder / name} does not match its checksum in {path.name}: the file is corrupt or "
                "was changed. Restore it (git checkout -- weights/) or make it again with the command "
                "in weights/README.md.")


def load_folder(folder: str | Path, dtype=np.float32) -> tuple[GPT2Config, dict]:
    """Read a converted or Hugging Face GPT-2 folder -> (config, params), shapes checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsNotFoundError(f"{folder} is not a folder. Give the folder holding config.json.")
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(
            f"{folder} has no config.json, so it is not a GPT-2 checkpoint folder. Give the "
            "folder that model.save_pretrained or `minipeft convert` wrote.")
    source = folder
    folder = read_dir(folder, "model", "config.json")   # a folder shared with other files: one version
    config = GPT2Config.from_json_file(folder / "config.json")
    verify_checksums(folder)
    kind, files = _weight_files(folder)
    raw = {}
    for f in files:
        raw.update(read_safetensors(f) if kind == "safetensors" else read_bin(f))
    params = normalize_names(raw, str(source))
    check_params(params, config, str(source))
    params = {k: _to_float32(k, v, str(source)).astype(dtype, copy=False) for k, v in params.items()}
    return config, params


def hf_config_dict(config: GPT2Config) -> dict:
    """config.json for a converted folder: Hugging Face's GPT2Config keys."""
    d = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
        "n_positions": config.n_positions, "n_ctx": config.n_positions,
        "vocab_size": config.vocab_size, "layer_norm_epsilon": config.layer_norm_epsilon,
        "n_inner": config.n_inner, "tie_word_embeddings": True, "torch_dtype": "float32",
        "minipeft_format": FORMAT_VERSION,
    }
    if config.vocab_size > 50256:               # GPT-2's <|endoftext|> exists in this vocabulary
        d["bos_token_id"] = d["eos_token_id"] = 50256
    return d


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "encoder.json", "vocab.bpe")


def save_folder(dst: str | Path, config: GPT2Config, params: dict, overwrite: bool = False,
                extra_files: tuple[Path, ...] = (), checksums: bool = False) -> Path:
    """Write config.json + model.safetensors (+ extra files such as the tokenizer's, and
    with ``checksums`` a checksums.json of the weights and tokenizer), all at once
    (atomic.atomic_save): into a folder that holds only these files, a temp folder
    replaces it in one step; into one that holds other files too (the user's notes, a
    tokenizer, the working directory), only these files change, together, and nothing
    else is touched. A checksums.json this save does not write is removed (it would
    describe the old weights)."""
    dst = Path(dst)
    occupied = any(dst.iterdir()) if dst.is_dir() else (dst.exists() or dst.is_symlink())
    if occupied and not overwrite:
        raise MinipeftError(
            f"{dst} already exists and is not empty; minipeft will not overwrite it. "
            "Choose another folder or pass overwrite=True (--overwrite on the CLI).")
    check_params(params, config, "the model to save")
    names = ("model.safetensors", "config.json", *(Path(f).name for f in extra_files), CHECKSUMS_NAME)
    with atomic_save(dst, names, "model") as tmp:
        tensors = {k: np.ascontiguousarray(params[k], dtype=np.float32) for k in expected_shapes(config)}
        safetensors.numpy.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2) + "\n")
        for f in extra_files:
            shutil.copyfile(f, tmp / Path(f).name)
        if checksums:
            write_checksums(tmp)
    return dst


def tokenizer_files(folder) -> tuple[Path, ...]:
    """The tokenizer's files that ``folder`` holds (copied along by convert and merge)."""
    return tuple(Path(folder) / f for f in TOKENIZER_FILES if (Path(folder) / f).is_file())


def convert_checkpoint(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """Hugging Face GPT-2 folder -> converted folder (float32 safetensors, checked).

    The tokenizer's files, where the source has them, are copied along."""
    if Path(dst).resolve() == Path(src).resolve():
        raise MinipeftError(
            f"convert would write {dst} over its own source; choose another output folder.")
    config, params = load_folder(src)
    return save_folder(dst, config, params, overwrite=overwrite, extra_files=tokenizer_files(src))




def fetch_and_convert(name: str) -> Path:
    """Download ``name`` (hub.py, the one module that talks to the network) and convert it
    into ``weights/<name>/`` (once)."""
    return convert_checkpoint(download(name), weights_dir() / name)


def resolve_model_folder(path_or_name: str | Path) -> Path:
    """A folder path, a bundled name (``weights/<name>``) or a hub name -> a folder."""

    if not isinstance(path_or_name, (str, os.PathLike)):
        raise WeightsNotFoundError(
            f"A model is a folder path or a name (a str), got {type(path_or_name).__name__} "
            f"{path_or_name!r}; e.g. GPT2.from_pretrained('tiny-shakespeare').")
    path = Path(path_or_name)
    if path.is_dir():
        return path
    if path.is_file():
        raise WeightsNotFoundError(
            f"{path} is a file; give the folder that holds config.json and the weights.")
    name = str(path_or_name)
    folder = bundled_dir(name)
    if folder is not None:
        return folder
    if name in HUB_NAMES:
        return fetch_and_convert(name)
    raise WeightsNotFoundError(
        f"No folder {name!r} and no model of that name. Give a GPT-2 folder (converted, or "
        f"Hugging Face's with config.json + model.safetensors), a bundled name "
        f"({', '.join(bundled_names()) or 'none under weights/ yet'}) or a hub name "
        f"({', '.join(HUB_NAMES)}).")
