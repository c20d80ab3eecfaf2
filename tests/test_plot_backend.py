"""A library call never changes the user's session: saving a plot leaves matplotlib's
backend and pyplot's figures as they were, so a notebook keeps showing figures inline
after the demo or a training run has saved its loss plot (issue 12, §5)."""
from __future__ import annotations

import json
import os

import pytest

from minipeft.train.plots import plot_losses

HISTORY = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "eval_loss": 2.7},
           {"step": 3, "loss": 2.0}]


def test_plot_losses_touches_neither_backend_nor_pyplot(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt
    before = matplotlib.get_backend()
    matplotlib.use("svg")                      # any backend other than Agg: the user's choice
    try:
        open_figures = plt.get_fignums()
        plot_losses(HISTORY, tmp_path / "loss.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == open_figures
    finally:
        matplotlib.use(before)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]      # no temp file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "loss.png").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it


# A notebook as a student runs it: a figure, the demo (which saves its loss plot), then
# the same figure again and a new one. Both must still show inline (an image/png output).
CELLS = [
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(2, 2))\n"
    "ax.plot([0, 1], [1, 0])",
    "from minipeft.demo import DemoConfig, run_demo\n"
    "cfg = DemoConfig(steps=2, batch_size=4, n_train=8, n_eval=2, max_new_tokens=2)\n"
    "result = run_demo(cfg, out=OUT, progress=False)",
    "fig",
    "plt.figure(figsize=(2, 2))\n"
    "plt.plot([0, 1], [0, 1])\n"
    "plt.show()",
]


def test_figures_still_show_inline_in_a_notebook_after_the_demo(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [f"OUT = {json.dumps(str(tmp_path / 'demo'))}"] + CELLS
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    def shows_a_figure(cell) -> bool:
        return any("image/png" in out.get("data", {}) for out in cell.outputs)
    figure, demo, same_again, new_one = nb.cells[1:]
    assert shows_a_figure(figure), "the first figure did not show inline: is the kernel's backend inline?"
    assert (tmp_path / "demo" / "loss.png").is_file()
    assert shows_a_figure(same_again), "the same figure no longer shows after the demo saved its plot"
    assert shows_a_figure(new_one), "a new pyplot figure no longer shows after the demo saved its plot"
