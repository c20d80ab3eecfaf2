"""``minipeft exercises report``: a class of four submissions — solved, never-ending,
half-solved, one that crashes its kernel — each gets its row, and the endless one (second)
does not stop the two after it. Runs real kernels (nbclient), offline, with a short limit."""
from __future__ import annotations

import csv
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from minipeft.cli import main
from minipeft.exercises import EXERCISES

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
PART = "ex3_other_methods"
PART3 = [n for n, ex in EXERCISES.items() if ex.part == 3]
LIMIT = 30          # seconds per submission: the solved notebook needs ~10 s on 2 busy cores


def _code_index(nb, exercise):
    """The index of the cell that defines the exercise's function."""
    return next(i for i, c in enumerate(nb.cells)
                if c.cell_type == "code" and f"def {exercise}(" in c.source)


def _class(tmp_path) -> Path:
    solved = nbformat.read(ROOT / "notebooks" / "solutions" / f"{PART}.ipynb", as_version=4)
    student = nbformat.read(ROOT / "notebooks" / "exercises" / f"{PART}.ipynb", as_version=4)
    folder = tmp_path / "class"
    folder.mkdir()
    nbformat.write(solved, folder / "alice.ipynb")

    half = nbformat.from_dict(json.loads(json.dumps(student)))      # 3.1 and 3.4 solved,
    for name in ("ia3_forward", "prompt_backward"):                  # 3.5 wrong, the rest to do
        i = _code_index(solved, name)
        half.cells[i].source = solved.cells[i].source
    i = _code_index(solved, "bottleneck_forward")
    half.cells[i].source = half.cells[i].source.replace(
        'raise NotImplementedError("Exercise 3.5: bottleneck adapter forward")',
        "return x + a + np.maximum((x + a) @ W_down.T + b_down, 0) @ W_up.T")   # b_up forgotten
    half.cells.insert(1, nbformat.v4.new_code_cell('print("[PASS] Exercise 3.6 '
                                                   'bottleneck_backward")  # printing wins nothing'))
    nbformat.write(half, folder / "bob.ipynb")

    crash = nbformat.from_dict(json.loads(json.dumps(solved)))
    i = _code_index(solved, "prefix_attention")
    crash.cells.insert(i, nbformat.v4.new_code_cell("import os\nos._exit(3)   # the kernel dies"))
    nbformat.write(crash, folder / "carol.ipynb")

    endless = nbformat.from_dict(json.loads(json.dumps(solved)))
    i = _code_index(solved, "ia3_backward")
    endless.cells.insert(i, nbformat.v4.new_code_cell("while True:\n    pass"))
    nbformat.write(endless, folder / "bart.ipynb")     # second: the rest run after it
    return folder


def _kernels(under: Path) -> set[int]:
    """Kernels alive whose verdict record lies under ``under`` (those of this test's report,
    not the kernels other tests or people run on the machine)."""
    pids, mark = set(), f"MINIPEFT_EXERCISES_RECORD={under}".encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"ipykernel_launcher" in (d / "cmdline").read_bytes() and \
                        mark in (d / "environ").read_bytes():
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


def test_a_class_report(tmp_path, capsys, monkeypatch):
    folder = _class(tmp_path)
    temp = tmp_path / "temp"                 # where the report's per-submission folders go
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    start = time.monotonic()
    rc = main(["exercises", "report", str(folder), "--out", str(tmp_path / "out"),
               "--timeout", str(LIMIT)])
    took = time.monotonic() - start
    assert rc == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {Path(r["submission"]).stem: r for r in data["submissions"]}
    assert list(rows) == ["alice", "bart", "bob", "carol"]
    status = {who: {n: r["exercises"][n]["status"] for n in PART3} for who, r in rows.items()}

    assert set(status["alice"].values()) == {"passed"}, rows["alice"]
    assert rows["alice"]["status"] == "ok"

    assert status["bob"] == {"ia3_forward": "passed", "ia3_backward": "not attempted",
                             "prefix_attention": "not attempted", "prompt_backward": "passed",
                             "bottleneck_forward": "failed", "bottleneck_backward": "not attempted"}

    assert status["carol"]["ia3_forward"] == "passed" and status["carol"]["ia3_backward"] == "passed"
    assert {status["carol"][n] for n in ("prefix_attention", "prompt_backward",
                                         "bottleneck_forward", "bottleneck_backward")} == {"error"}
    assert rows["carol"]["status"].startswith("stopped: DeadKernelError")

    assert status["bart"]["ia3_forward"] == "passed"
    assert {v for n, v in status["bart"].items() if n != "ia3_forward"} == {"error"}
    assert rows["bart"]["status"] == f"timeout after {LIMIT} s"
    assert rows["bart"]["seconds"] < LIMIT + 10
    assert took < 4 * LIMIT + 30

    summary = data["summary"]["bottleneck_forward"]
    assert (summary["passed"], summary["failed"], summary["not attempted"], summary["error"]) == (1, 1, 0, 2)
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [Path(r["submission"]).stem for r in table] == ["alice", "bart", "bob", "carol"]
    assert table[2]["bottleneck_forward"] == "failed" and table[1]["ia3_backward"] == "error"
    assert "3.4 prompt_backward" in printed and "timeout after" in printed

    time.sleep(1)
    leftover = _kernels(temp) if Path("/proc/self/environ").exists() else set()
    for pid in leftover:                     # never leave a spinning kernel behind, even failing
        os.kill(pid, signal.SIGKILL)
    assert not leftover, "a kernel outlived its submission"


def test_bad_arguments_are_one_sentence(tmp_path, capsys):
    assert main(["exercises", "report", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("x")
    assert main(["exercises", "report", str(tmp_path / "a.txt")]) == 1
    assert "not a notebook" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["exercises", "report", str(empty)]) == 1
    assert "holds no .ipynb" in capsys.readouterr().err
    nb = tmp_path / "x.ipynb"
    nb.write_text("{}")
    assert main(["exercises", "report", str(nb), "--timeout", "0"]) == 1
    assert "--timeout must be > 0" in capsys.readouterr().err
