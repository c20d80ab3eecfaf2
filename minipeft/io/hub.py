"""Downloading OpenAI's GPT-2 checkpoints from the Hugging Face hub (needs network).

Only this module talks to the network, and only when a hub name is asked for
that is not already converted under ``weights/``. Offline, it says so and how to
convert a folder copied from elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import HubError
from .paths import HUB_NAMES, weights_dir

HUB_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
assert set(HUB_REPOS) == set(HUB_NAMES)

_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json"]


def _offline_help(name: str) -> str:
    return (
        f"On a machine with network, download the folder (e.g. `huggingface-cli download "
        f"{HUB_REPOS[name]} config.json model.safetensors vocab.json merges.txt --local-dir "
        f"{name}`), copy it here, and convert it once: `minipeft convert {name} "
        f"{weights_dir() / name}`. Then GPT2.from_pretrained({name!r}) works offline.")


def download(name: str) -> Path:
    """Fetch the hub folder of ``name`` into the Hugging Face cache; return its path."""
    try:
        from huggingface_hub import snapshot_download  # optional: pip install 'minipeft[hub]'
    except ImportError:
        raise HubError(
            f"{name!r} is not converted under {weights_dir()} and downloading it needs "
            "huggingface_hub: pip install 'minipeft[hub]'. " + _offline_help(name)) from None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise HubError(
            f"{name!r} is not converted under {weights_dir()} and HF_HUB_OFFLINE is set, so it "
            "cannot be downloaded. " + _offline_help(name))
    try:
        path = snapshot_download(repo_id=HUB_REPOS[name], allow_patterns=_FILES)
    except Exception as e:              # network errors come in many classes
        raise HubError(
            f"Could not download {name!r} from the Hugging Face hub ({type(e).__name__}); this "
            "machine may have no network. " + _offline_help(name)) from None
    return Path(path)
