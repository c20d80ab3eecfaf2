"""Adapters on disk in peft's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are those of peft's saved state dict (``base_model.model.transformer.h.0.attn.c_attn.lora_A.weight``;
no adapter name inside; ``….lora_magnitude_vector`` for DoRA; trained biases as
``….base_layer.bias`` on LoRA layers). The "default" adapter goes in the folder itself,
any other in ``folder/<name>``, as peft does, so either library reads what the other wrote.
Saving is all-or-nothing per adapter, config and weights together (see save_adapters and
io/atomic.py).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import safetensors.numpy

from ..errors import CheckpointError, MinipeftError, WeightsNotFoundError
from ..io.atomic import OURS, atomic_folder, atomic_save, read_dir, usual_permissions_one
from ..io.tensors import read_safetensors
from .config_base import read_config

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def _carry_over(folder: Path, tmp: Path) -> None:
    """Hard-link into ``tmp`` what ``folder`` holds besides this save's files (other
    adapters, the user's own files): nothing is copied, and the swap keeps it all."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(OURS):                 # minipeft's own hidden files
            continue
        target = tmp / entry.name
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True, copy_function=os.link)
            else:
                os.link(entry, target, follow_symlinks=False)
        except OSError:                                 # no hard links here: copy instead
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(entry, target, follow_symlinks=False)


ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md")


def _holds_only_adapters(folder: Path) -> bool:
    """Is ``folder`` missing, or made only of adapter files and adapter subfolders
    (minipeft's own hidden entries aside; anyone else's hidden file, .git say, counts)?"""
    if not (folder.exists() or folder.is_symlink()):
        return True
    if folder.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        return False                                    # never swap out the working directory
    for entry in folder.iterdir():
        if entry.name.startswith(OURS):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if any(not e.name.startswith(OURS) and (e.is_dir() or e.name not in ADAPTER_FILES)
                   for e in entry.iterdir()):
                return False
        elif entry.name not in ADAPTER_FILES or entry.is_symlink():
            return False
    return True


def _writers(pm, name: str) -> dict:
    """{file name: write(path)} for adapter ``name``: its safetensors and its config."""
    d, state = pm._adapter_state(name)
    arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
    return {WEIGHTS_NAME: lambda p: safetensors.numpy.save_file(arrays, str(p), metadata={"format": "pt"}),
            CONFIG_NAME: lambda p: Path(p).write_text(json.dumps(d, indent=2) + "\n")}


def save_adapters(pm, folder, selected_adapters=None) -> Path:
    """Every selected adapter is written into a temp folder (with hard links to what the
    folder already holds), which then replaces ``folder`` in one step: a save that fails
    or is killed leaves the previous adapter files whole, config and weights together.
    A folder that holds other things (or the working directory) is never swapped: there
    each adapter's two files change together in one step, through links into a hidden
    generation folder (io/atomic.py, atomic_files), and nothing else is touched."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MinipeftError(f"{folder} is a file; save_pretrained needs a folder.")
    names = list(pm.peft_config) if selected_adapters is None else list(selected_adapters)
    for name in names:
        pm._check_name(name)
    if not _holds_only_adapters(folder):
        for name in names:
            with atomic_save(folder if name == "default" else folder / name,
                             (WEIGHTS_NAME, CONFIG_NAME), "adapter") as tmp:
                for file, write in _writers(pm, name).items():
                    write(tmp / file)
        return folder
    with atomic_folder(folder) as tmp:
        _carry_over(folder, tmp)
        written = [tmp]
        for name in names:
            dst = tmp if name == "default" else tmp / name
            dst.mkdir(exist_ok=True)
            written.append(dst)
            for file, write in _writers(pm, name).items():
                (dst / file).unlink(missing_ok=True)    # a hard link to the old file: never write through it
                write(dst / file)
                written.append(dst / file)
        for p in written:                   # new files only: a chmod of a link changes the original
            usual_permissions_one(p)
    return folder


def read_adapter(folder) -> tuple[object, dict, Path]:
    """-> (config of the method in its peft_type, {saved key: array}, weights path), the
    files checked for presence and form; the tensors are checked by the method's model."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise WeightsNotFoundError(f"No {CONFIG_NAME} in {folder}: give the folder that "
                                   "save_pretrained (peft's or minipeft's) wrote.")
    where = read_dir(folder, "adapter", CONFIG_NAME)     # both files of one version
    cfg_path, w_path = where / CONFIG_NAME, where / WEIGHTS_NAME
    config = read_config(cfg_path)              # the one JSON reader; every malformation a ConfigError
    if not w_path.is_file():
        hint = " It has adapter_model.bin: minipeft reads only safetensors (no pickles); re-save " \
               "it with peft's save_pretrained(safe_serialization=True)." \
            if (folder / "adapter_model.bin").is_file() else ""
        hint = hint or " Give the folder that save_pretrained wrote, with both of its files."
        raise WeightsNotFoundError(f"No {WEIGHTS_NAME} in {folder}.{hint}")
    return config, read_safetensors(w_path), w_path


def check_state(raw: dict, expected: dict, w_path, model, optional=()) -> dict:
    """{saved key: array} -> the same in the model's dtype, once every key of ``expected``
    ({key: shape}) is present with its shape and no other key is there (``optional``:
    {key: shape} that may be missing)."""
    allowed = {**dict(optional), **expected}
    missing = sorted(set(expected) - set(raw))
    unexpected = sorted(set(raw) - set(allowed))
    if missing or unexpected:
        raise CheckpointError(
            f"{w_path} does not fit this model and config: missing {missing[:3]}"
            f"{' …' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{' …' if len(unexpected) > 3 else ''}. It was saved for another model "
            f"(this one has n_layer={model.config.n_layer}) or its files are mixed up.")
    out = {}
    for k, v in raw.items():
        if tuple(v.shape) != tuple(allowed[k]):
            raise CheckpointError(
                f"{w_path}: {k} has shape {tuple(v.shape)}, this model needs {tuple(allowed[k])}: "
                f"the adapter was saved for another model size (this one has n_embd="
                f"{model.config.n_embd}) or depth (n_layer={model.config.n_layer}).")
        out[k] = np.asarray(v, dtype=model.dtype)
    return out
