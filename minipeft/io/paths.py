"""Where converted weights live, and how a model name finds its folder.

Converted checkpoints sit in the repository's ``weights/<name>/`` folder (or in
the folder named by the ``MINIPEFT_WEIGHTS`` environment variable). A *bundled*
name is simply a sub-folder of that directory holding a ``config.json``.
"""
from __future__ import annotations

import os
from pathlib import Path

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")


def weights_dir() -> Path:
    """The folder that holds converted and bundled models."""
    env = os.environ.get("MINIPEFT_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "weights"


def bundled_dir(name: str) -> Path | None:
    """``weights/<name>/`` if it holds a model, else None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    folder = weights_dir() / name
    return folder if (folder / "config.json").is_file() else None


def bundled_names() -> list[str]:
    """Names of the models under ``weights/`` (loadable offline)."""
    root = weights_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())
