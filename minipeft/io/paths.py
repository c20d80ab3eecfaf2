"""Where converted weights live, and how a model name finds its folder.

Converted checkpoints sit in the repository's ``weights/<name>/`` folder (or in
the folder named by the ``MINIPEFT_WEIGHTS`` environment variable). A *bundled*
name is simply a sub-folder of that directory holding a ``config.json``.

``file_in_folder`` is the one check of a name that a loader reads from a file (the
shard index, checksums.json): it must name a regular file inside the folder.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import CheckpointError

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")


def weights_dir() -> Path:
    """The folder that holds converted and bundled models."""
    env = os.environ.get("MINIPEFT_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "weights"


REPO_WEIGHTS = Path(__file__).resolve().parent.parent.parent / "weights"   # the bundled models


def bundled_dir(name: str) -> Path | None:
    """``weights/<name>/`` (MINIPEFT_WEIGHTS's, then the repository's) if it holds a model."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    for root in (weights_dir(), REPO_WEIGHTS):
        folder = root / name
        if (folder / "config.json").is_file():
            return folder
    return None


def bundled_names() -> list[str]:
    """Names of the models under ``weights/`` (loadable offline)."""
    roots = [r for r in (weights_dir(), REPO_WEIGHTS) if r.is_dir()]
    return sorted({p.name for r in roots for p in r.iterdir() if (p / "config.json").is_file()})


def _confinement_root(folder: Path) -> Path:
    """The folder a name read from ``folder``'s files must stay in: the folder itself, or,
    for a snapshot in Hugging Face's cache (``models--org--name/snapshots/<rev>``), the
    repository's cache folder, whose ``blobs/`` the snapshot's files are links into."""
    real = folder.resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return real


def file_in_folder(folder: str | Path, name, source: str, error=None, missing=None,
                   what: str = "File", where: str | None = None) -> Path:
    """The regular file that ``name``, read from the file ``source`` (a shard index, a
    checksum list), names inside ``folder`` -> its real path.

    The one check for every name a loader reads from a file: refused (``error``, a
    CheckpointError by default) unless it is a relative path without ``..`` that stays
    inside ``folder`` once links are followed, and names a regular file (not a device
    such as /dev/zero, a pipe or a folder). ``missing``: the error class when no such
    file exists (default: ``error``); ``what`` and ``where`` name the file and ``source``
    in that message ("Shard …/x.safetensors named in the index is missing")."""
    error = error or CheckpointError
    missing = missing or error
    folder = Path(folder)
    redo = "The file was not written by minipeft or transformers; get the folder again from " \
           "where it came."
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{source} names {name!r}, which is not a file name. {redo}")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise error(f"{source} names {name!r}, a path outside its folder {folder}; every file it "
                    f"names must lie in that folder. {redo}")
    path = folder / name
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise missing(f"{what} {path} named in {where or source} is missing. Restore the folder "
                      "(every file its index names) or get it again.") from None
    except (OSError, RuntimeError) as e:                # a loop of links, a folder we cannot enter
        raise error(f"{path}, named in {source}, cannot be opened: {e}. {redo}") from None
    root = _confinement_root(folder)
    if real != root and root not in real.parents:
        raise error(f"{source} names {name!r}, which is a link to {real}, outside its folder "
                    f"{folder}; every file it names must lie in that folder. {redo}")
    try:
        mode = os.stat(real).st_mode
    except OSError as e:
        raise error(f"{path}, named in {source}, cannot be read: {e.strerror or e}.") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
        raise error(f"{source} names {name!r}, which is {kind}, not a regular file. {redo}")
    return real
