"""Plots of a run, for people who would rather look than read: written atomically as PNG.

Every figure minipeft saves is an explicit ``matplotlib.figure.Figure`` on its own Agg
canvas: nothing here calls ``matplotlib.use`` or pyplot, so a library call never
switches a notebook's backend (figures keep showing inline after the demo) nor adds
to or closes the user's pyplot figures.
"""
from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.atomic import atomic_file


def new_figure(width: float = 6, height: float = 3.5):
    """A Figure on its own Agg canvas: ``savefig`` works, pyplot and the backend are untouched."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically, as every save (io/atomic.atomic_file:
    a fresh temp file beside it, then one rename; a failure leaves ``path`` as it was)."""
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    return Path(path)


def plot_losses(history, path: str | os.PathLike[str], title: str = "Training loss") -> Path:
    """The training (and eval) loss against the step, written atomically as a PNG."""
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss")
    ev = [h for h in history if "eval_loss" in h]
    if ev:
        ax.plot([h["step"] for h in ev], [h["eval_loss"] for h in ev], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
