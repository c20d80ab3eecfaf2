"""Plots of a run, for people who would rather look than read: written atomically as PNG."""
from __future__ import annotations

from pathlib import Path


def plot_losses(history, path: Path, title: str = "Training loss") -> None:
    """The training (and eval) loss against the step, written atomically as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss")
    ev = [h for h in history if "eval_loss" in h]
    if ev:
        ax.plot([h["step"] for h in ev], [h["eval_loss"] for h in ev], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
