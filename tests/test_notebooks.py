"""The notebooks: committed .ipynb equal to their sources, the exercise stripping, and every
notebook executed top to bottom (``pytest -m notebooks`` runs only the executions).

Executions run in fast mode (``MINIPEFT_FAST=1``: the same cells with shorter training),
offline, each in a fresh ``python3`` kernel whose working folder is a temp folder, so
nothing they save lands in the tree.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


# ---------------------------------------------------------------- sources and generated files

def test_committed_notebooks_match_their_sources():
    problems = build.drift()
    assert not problems, "\n".join(problems)


def test_every_tutorial_has_a_source_and_a_closing_section():
    sources = sorted((NOTEBOOKS / "src").glob("[0-9][0-9]_*.py"))
    assert sources, "no tutorial sources in notebooks/src/"
    for source in sources:
        text = source.read_text(encoding="utf-8")
        assert "What to try next" in text, f"{source.name} does not end with 'What to try next'"
        assert "import minipeft" in text or "from minipeft" in text, f"{source.name} never imports minipeft"


def test_generation_is_byte_identical_and_ids_are_stable():
    first, second = build.targets(), build.targets()
    assert first == second
    for path, text in first.items():
        nb = json.loads(text)
        ids = [cell["id"] for cell in nb["cells"]]
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"
        assert ids == [build.cell_id(path.stem, i) for i in range(len(ids))]
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name
        assert nb["metadata"]["kernelspec"]["name"] == "python3"


# ---------------------------------------------------------------- the exercise convention

EXERCISE = '''\
# %% [markdown]
# # Exercise 9
# Why is B zero at init?
#
# ### BEGIN SOLUTION  Exercise 9.2: why B = 0
# So that the adapted model starts as the base model.
# ### END SOLUTION

# %%
import numpy as np

def layernorm(x, eps=1e-5):
    """Normalise the last axis."""
    ### BEGIN SOLUTION  Exercise 9.1: layernorm forward
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)
    ### END SOLUTION

def twice(x):
    if x is not None:
        ### BEGIN SOLUTION Exercise 9.3: "double" it
        return 2 * x
        ### END SOLUTION
    return None
'''


def _cells(text):
    cells = json.loads(text)["cells"]
    for cell in cells:
        cell["source"] = "".join(cell["source"])     # .ipynb stores a cell as a list of lines
    return cells


def test_student_version_replaces_each_region_with_a_raise_at_its_indentation():
    cells = _cells(build.to_notebook(EXERCISE, "ex", student=True))
    code = cells[1]["source"]
    assert "mean = x.mean" not in code and "return 2 * x" not in code
    assert "### " not in code
    assert '    raise NotImplementedError("Exercise 9.1: layernorm forward")\n' in code
    assert '        raise NotImplementedError("Exercise 9.3: \\"double\\" it")\n' in code
    assert '    """Normalise the last axis."""' in code and "    return None" in code
    namespace = {}
    exec(code, namespace)
    with pytest.raises(NotImplementedError, match=r"Exercise 9\.1: layernorm forward"):
        namespace["layernorm"](None)
    with pytest.raises(NotImplementedError, match='Exercise 9.3: "double" it'):
        namespace["twice"](1)
    assert namespace["twice"](None) is None
    text = cells[0]["source"]
    assert "So that" not in text and "*YOUR ANSWER HERE (Exercise 9.2: why B = 0)*" in text


def test_solution_version_keeps_the_code_and_drops_the_markers():
    import numpy as np
    cells = _cells(build.to_notebook(EXERCISE, "ex", student=False))
    code = cells[1]["source"]
    assert "BEGIN SOLUTION" not in code and "END SOLUTION" not in code
    namespace = {}
    exec(code, namespace)
    x = np.arange(6.0).reshape(2, 3)
    assert np.allclose(namespace["layernorm"](x).mean(-1), 0)
    assert namespace["twice"](3) == 6
    assert "So that the adapted model starts as the base model." in cells[0]["source"]


@pytest.mark.parametrize("bad, complaint", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n", "needs the exercise's name"),
    ("def f():\n    ### BEGIN SOLUTION  Exercise 1.1: f\n    return 1\n", "has no END SOLUTION"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "without its BEGIN"),
    ("### BEGIN SOLUTION  Exercise 1.1: a\n### BEGIN SOLUTION  Exercise 1.2: b\n"
     "### END SOLUTION\n### END SOLUTION\n", "do not nest"),
    ("# %%\n### BEGIN SOLUTION  Exercise 1.1: a\nx = 1\n\n# %%\n### END SOLUTION\n",
     "has no END SOLUTION"),
])
def test_a_broken_region_stops_the_build_naming_cell_and_line(bad, complaint):
    with pytest.raises(build.BuildError, match=complaint) as info:
        build.to_notebook(bad, "ex", student=True, where="src/exercises/ex.py")
    assert "src/exercises/ex.py cell 0 line" in str(info.value)


def test_markers_in_a_tutorial_are_refused():
    with pytest.raises(build.BuildError, match="solution markers in a tutorial"):
        build.to_notebook("x = 1\n### BEGIN SOLUTION  Exercise 1.1: a\n### END SOLUTION\n", "t")


def test_check_lists_a_drifted_a_missing_and_an_orphan_notebook(tmp_path, capsys):
    (tmp_path / "src" / "exercises").mkdir(parents=True)
    (tmp_path / "src" / "00_a.py").write_text("# %%\nx = 1\n")
    (tmp_path / "src" / "01_b.py").write_text("# %%\ny = 2\n")
    (tmp_path / "src" / "exercises" / "ex.py").write_text(EXERCISE)
    written = build.build(tmp_path)
    assert len(written) == 4 and build.drift(tmp_path) == []
    assert build.build(tmp_path) == []                        # nothing changed: nothing written
    (tmp_path / "src" / "01_b.py").write_text("# %%\ny = 3\n")
    (tmp_path / "solutions" / "ex.ipynb").unlink()
    (tmp_path / "99_orphan.ipynb").write_text("{}")
    problems = build.drift(tmp_path)
    assert problems == ["01_b.ipynb: differs from its source (run python notebooks/build.py)",
                        "solutions/ex.ipynb: missing (run python notebooks/build.py)",
                        "99_orphan.ipynb: no source in notebooks/src/ (write one, or delete the notebook)"]


def test_the_command_line_check_fails_on_drift_and_passes_when_clean(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "00_a.py").write_text("# %%\nx = 1\n")
    assert build.main(["--check"], root=tmp_path) == 1
    assert "00_a.ipynb: missing" in capsys.readouterr().out
    assert build.main([], root=tmp_path) == 0
    assert "wrote 00_a.ipynb" in capsys.readouterr().out
    assert build.main(["--check"], root=tmp_path) == 0
    assert "1 notebooks match their sources" in capsys.readouterr().out
    (tmp_path / "src" / "00_a.py").write_text("# %%\n### BEGIN SOLUTION  Exercise 1.1: a\n### END SOLUTION\n")
    assert build.main([], root=tmp_path) == 1
    assert "solution markers in a tutorial" in capsys.readouterr().err


# ---------------------------------------------------------------- execution

ALL_NOTEBOOKS = sorted(p.relative_to(NOTEBOOKS).as_posix() for p in build.generated_places())


@pytest.mark.notebooks
@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MINIPEFT_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()                      # raises CellExecutionError on any error
    finally:
        shutil.rmtree(tmp_path / "out", ignore_errors=True)   # 08 writes 1 GB of GPT-2 weights there
    print(f"{name}: {time.perf_counter() - start:.1f} s in fast mode")   # shown with -s; never asserted
    for cell in nb.cells:                     # a figure shown as its repr, not a picture
        for out in cell.get("outputs", []):   # (display(fig) before the inline backend is on)
            data = out.get("data", {})
            assert not (data.get("text/plain", "").startswith("<Figure") and "image/png" not in data), \
                f"{name}: a figure came out as text: {data['text/plain']!r}; add %matplotlib inline"
