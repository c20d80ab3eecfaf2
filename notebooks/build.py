"""Generate the notebooks in ``notebooks/`` from their jupytext sources.

    python notebooks/build.py            # regenerate every .ipynb from notebooks/src/
    python notebooks/build.py --check    # exit 1 and list the notebooks that drifted

Every notebook is written once, as a jupytext *percent* script (reviewable diffs, runnable
as plain Python), and the ``.ipynb`` files that students open are generated from it and
committed. Students need no extra tool: they open the ``.ipynb``.

Sources and what each becomes
-----------------------------
- ``notebooks/src/NN_name.py``            -> ``notebooks/NN_name.ipynb`` (a tutorial)
- ``notebooks/src/exercises/name.py``     -> ``notebooks/solutions/name.ipynb`` (as written,
  the markers removed) and ``notebooks/exercises/name.ipynb`` (the student version).

A source is cells separated by ``# %%`` lines (``# %% [markdown]`` for text, whose lines
start with ``# ``), jupytext's percent format. Cell tags are kept
(``# %% tags=["..."]``); nothing else of jupytext's bookkeeping reaches the notebook.

The generated ``.ipynb`` has no outputs and no execution counts, the kernel ``python3``,
and cell ids derived from the notebook's name and the cell's index (the first 8 hex digits
of ``sha1("<name>:<index>")``), so that regenerating gives the same bytes.
``tests/test_notebooks.py`` fails when a committed notebook differs from what this tool
makes of its source, so edit the source and run this tool; never edit the ``.ipynb``.

The exercise convention (nbgrader's markers)
--------------------------------------------
In an exercise source, each part the student writes sits between two marker lines::

    def layernorm_forward(x, g, b, eps=1e-5):
        ### BEGIN SOLUTION  Exercise 2.1: layernorm forward
        mean = x.mean(-1, keepdims=True)
        ...
        return out, cache
        ### END SOLUTION

- ``### BEGIN SOLUTION`` must be followed, on the same line, by the text that names the
  exercise (``Exercise N.k: what to write``); a region without it is an error.
- In the student version the whole region, markers included, becomes one line at the
  BEGIN line's indentation: ``raise NotImplementedError("Exercise 2.1: layernorm forward")``.
  In a markdown cell it becomes ``*YOUR ANSWER HERE (Exercise 2.1: ...)*``.
- In the solution version only the two marker lines are removed.
- Regions do not nest, do not cross cells, and every BEGIN has its END; anything else
  stops the build with the file, the cell and the line.
- A source under ``exercises/`` without any region is an error too (it would make two
  identical notebooks).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent          # notebooks/
SRC = HERE / "src"

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?P<rest>.*)$")
END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")

# cell metadata that means something to Jupyter; jupytext's own keys
# (lines_to_next_cell, cell_marker, ...) describe the script and are dropped
KEEP_CELL_METADATA = ("tags", "jupyter", "collapsed", "scrolled", "editable", "deletable")

NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


class BuildError(Exception):
    """A source that breaks the conventions above; the message names file, cell and line."""


def cell_id(name: str, index: int) -> str:
    """The stable id of cell ``index`` of notebook ``name`` (8 hex digits)."""
    return hashlib.sha1(f"{name}:{index}".encode()).hexdigest()[:8]


def strip_solutions(source: str, *, student: bool, cell_type: str = "code",
                    where: str = "") -> str:
    """One cell's source with its solution regions replaced (student) or unmarked (solution)."""
    out: list[str] = []
    open_at = None                                  # (line number, indent, message) of a BEGIN
    for number, line in enumerate(source.split("\n"), start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_at is not None:
                raise BuildError(f"{where} line {number}: a BEGIN SOLUTION inside the region "
                                 f"opened at line {open_at[0]}; regions do not nest")
            message = begin["rest"].strip()
            if not message:
                raise BuildError(f"{where} line {number}: '### BEGIN SOLUTION' needs the "
                                 "exercise's name after it, e.g. "
                                 "'### BEGIN SOLUTION  Exercise 2.1: layernorm forward'")
            open_at = (number, begin["indent"], message)
            if student:
                if cell_type == "code":
                    out.append(f"{begin['indent']}raise NotImplementedError({json.dumps(message)})")
                else:
                    out.append(f"{begin['indent']}*YOUR ANSWER HERE ({message})*")
        elif end:
            if open_at is None:
                raise BuildError(f"{where} line {number}: an END SOLUTION without its BEGIN")
            open_at = None
        elif open_at is None or not student:
            out.append(line)
    if open_at is not None:
        raise BuildError(f"{where} line {open_at[0]}: the BEGIN SOLUTION has no END SOLUTION "
                         "in the same cell")
    return "\n".join(out)


def has_solutions(text: str) -> bool:
    return any(BEGIN.match(line) for line in text.split("\n"))


def to_notebook(text: str, name: str, *, student: bool | None = None,
                where: str = "") -> str:
    """The .ipynb text of a percent-format source. ``student`` None: no markers expected;
    True / False: the student / solution version of an exercise."""
    parsed = jupytext.reads(text, fmt="py:percent")
    nb = nbformat.v4.new_notebook()
    nb.metadata = json.loads(json.dumps(NOTEBOOK_METADATA))
    for index, cell in enumerate(parsed.cells):
        source = cell.source
        at = f"{where} cell {index}"
        if student is None:
            if has_solutions(source):
                raise BuildError(f"{at}: solution markers in a tutorial; exercises live in "
                                 "notebooks/src/exercises/")
        else:
            source = strip_solutions(source, student=student, cell_type=cell.cell_type, where=at)
        metadata = {k: cell.metadata[k] for k in KEEP_CELL_METADATA if k in cell.metadata}
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(source, metadata=metadata)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(source, metadata=metadata)
        else:
            new = nbformat.v4.new_raw_cell(source, metadata=metadata)
        new.id = cell_id(name, index)
        nb.cells.append(new)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def targets(root: Path = HERE) -> dict[Path, str]:
    """Every notebook this tool makes under ``root``: path -> its .ipynb text."""
    src = root / "src"
    made: dict[Path, str] = {}
    for source in sorted(src.glob("*.py")):
        made[root / f"{source.stem}.ipynb"] = to_notebook(
            source.read_text(encoding="utf-8"), source.stem, where=str(source.relative_to(root)))
    for source in sorted((src / "exercises").glob("*.py")):
        text = source.read_text(encoding="utf-8")
        where = str(source.relative_to(root))
        if not has_solutions(text):
            raise BuildError(f"{where}: an exercise source without any "
                             "'### BEGIN SOLUTION' region")
        made[root / "solutions" / f"{source.stem}.ipynb"] = to_notebook(
            text, source.stem, student=False, where=where)
        made[root / "exercises" / f"{source.stem}.ipynb"] = to_notebook(
            text, source.stem, student=True, where=where)
    return made


def generated_places(root: Path = HERE) -> list[Path]:
    """The .ipynb files that exist where this tool writes (to find ones without a source)."""
    return sorted([*root.glob("*.ipynb"), *(root / "solutions").glob("*.ipynb"),
                   *(root / "exercises").glob("*.ipynb")])


def drift(root: Path = HERE) -> list[str]:
    """One line per notebook that differs from its source, is missing, or has no source."""
    made = targets(root)
    problems = []
    for path, text in made.items():
        rel = path.relative_to(root)
        if not path.exists():
            problems.append(f"{rel}: missing (run python notebooks/build.py)")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{rel}: differs from its source (run python notebooks/build.py)")
    for path in generated_places(root):
        if path not in made:
            problems.append(f"{path.relative_to(root)}: no source in notebooks/src/ "
                            "(write one, or delete the notebook)")
    return problems


def build(root: Path = HERE) -> list[Path]:
    """Write every notebook whose text changed; return the paths written."""
    written = []
    for path, text in targets(root).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None, root: Path = HERE) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and list the notebooks that drifted")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = drift(root)
            for line in problems:
                print(line)
            if not problems:
                print(f"{len(targets(root))} notebooks match their sources")
            return 1 if problems else 0
        written = build(root)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path.relative_to(root)}")
    print(f"{len(targets(root))} notebooks, {len(written)} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
