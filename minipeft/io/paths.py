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
