"""``minipeft exercises report SUBMISSION...``: a class's notebooks, run and tabulated.

Each submitted notebook runs in its own process (and its own Jupyter kernel), offline
(``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``), in fast mode (``MINIPEFT_FAST=1``),
in an empty temp folder, with a wall-clock limit; a cell that raises does not stop the
cells after it. The verdicts are not parsed from the printed output: every check appends
one JSON line to the file named by ``MINIPEFT_EXERCISES_RECORD`` (core.py), which the
run sets for that notebook, so a student who edits or deletes the printed text changes
nothing; the last verdict of an exercise counts.

Per submission × exercise the table says ``passed``, ``failed`` (with the recognised
misconception), ``not attempted``, or ``error``: the check never gave a verdict (the
notebook crashed before it, ran out of time, or the cell defining the function failed).
An exercise of a course part the notebook does not touch is left blank. One crashing or
endless submission is reported in its row and the others run as usual.

It runs the students' code: run reports in a sandbox or a throw-away VM, never on a
machine whose files matter.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ..errors import MinipeftError
from ..io.files import check_output_folder
from . import EXERCISES
from .core import RECORD_ENV, STRICT_ENV

STATUSES = ("passed", "failed", "not attempted", "error")
MARK = {"passed": "ok", "failed": "FAIL", "not attempted": "-", "error": "ERR", None: ""}
CHECK_CALL = re.compile(r"""check\(\s*["']([A-Za-z_0-9]+)["']""")


# ------------------------------------------------------------------ one submission
def _execute(path: str, workdir: str, cell_timeout: int, pidfile: str) -> int:
    """The child process: run the notebook with nbclient, print a JSON summary of its errors."""
    import nbformat  # optional (the test extra): only the child runs notebooks
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)

    def note_kernel(**_):                       # the parent kills it if this process is killed
        try:
            Path(pidfile).write_text(str(client.km.provisioner.process.pid))
        except Exception:
            pass
    client = NotebookClient(nb, kernel_name="python3", timeout=cell_timeout, allow_errors=True,
                            resources={"metadata": {"path": workdir}},
                            on_notebook_start=note_kernel)
    errors, status = [], "ok"
    try:
        client.execute()
    except Exception as e:                      # a timeout, a dead kernel, ...
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        status = f"stopped: {type(e).__name__}: {last}"[:300]
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code_cells, start=1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append({"cell": i, "error": f"{out.get('ename')}: {out.get('evalue')}"[:300]})
    print(json.dumps({"status": status, "errors": errors}))
    return 0


def _expected(nb_path: Path, registry) -> list[str]:
    """The exercises a notebook should give verdicts for: every exercise of each course
    part that one of its check(...) calls names."""
    try:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        text = "\n".join("".join(c.get("source", "")) for c in nb.get("cells", [])
                         if c.get("cell_type") == "code")
    except (OSError, ValueError, AttributeError):
        return []
    parts = {registry[n].part for n in CHECK_CALL.findall(text) if n in registry}
    return [n for n, ex in registry.items() if ex.part in parts]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass


def run_submission(path: Path, timeout: float, registry) -> dict:
    """Run one notebook in its own process; -> its row (status, seconds, verdicts, errors)."""
    row = {"submission": str(path), "status": "ok", "seconds": 0.0, "errors": [], "exercises": {}}
    expected = _expected(path, registry)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="minipeft-report-") as tmp:
        tmp = Path(tmp)
        record, pidfile, work = tmp / "verdicts.jsonl", tmp / "kernel.pid", tmp / "work"
        work.mkdir()
        env = dict(os.environ)
        env.pop(STRICT_ENV, None)                                  # a report never stops on a verdict
        env.update({RECORD_ENV: str(record), "MINIPEFT_FAST": "1", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
        cmd = [sys.executable, "-m", "minipeft.exercises.report", "--execute", str(path.resolve()),
               str(work), str(max(1, int(timeout))), str(pidfile)]
        proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
            summary = None
            for line in reversed(out.strip().splitlines()):
                try:
                    summary = json.loads(line)
                    break
                except ValueError:
                    continue
            if summary is None:
                last = (err.strip().splitlines() or ["no output"])[-1]
                row["status"] = f"could not run: {last}"[:300]
            else:
                row["errors"] = summary["errors"]
                row["status"] = summary["status"]
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.communicate()
            row["status"] = f"timeout after {timeout:g} s"
        finally:
            _kill_pidfile(pidfile)                                 # the kernel runs in its own session
            if proc.poll() is None:
                _kill_group(proc.pid)
        verdicts = {}
        if record.exists():
            for line in record.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    v = json.loads(line)
                    verdicts[v["exercise"]] = v                    # the last verdict counts
                except (ValueError, KeyError, TypeError):
                    continue
    if row["status"] == "ok" and row["errors"]:
        row["status"] = f"errors in {len(row['errors'])} cell(s)"
    for name in list(dict.fromkeys(expected + [n for n in verdicts if n in registry])):
        v = verdicts.get(name)
        row["exercises"][name] = ({"status": "error", "misconception": None,
                                   "message": "no verdict: the check did not run"} if v is None else
                                  {"status": v.get("status", "error"),
                                   "misconception": v.get("misconception"),
                                   "message": v.get("message", "")})
    row["seconds"] = round(time.monotonic() - start, 1)
    return row


# ------------------------------------------------------------------ the class
def collect(submissions) -> list[Path]:
    """Notebook files from the arguments: files as given, folders searched for *.ipynb."""
    paths = []
    for s in submissions:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
            if not found:
                raise MinipeftError(f"{p} holds no .ipynb notebook; give notebooks or folders of them.")
            paths += found
        elif p.is_file():
            if p.suffix != ".ipynb":
                raise MinipeftError(f"{p} is not a notebook (.ipynb); give the students' notebooks.")
            paths.append(p)
        else:
            raise MinipeftError(f"{p} does not exist; give the students' notebooks or a folder of them.")
    return paths


def summarise(rows, registry) -> dict:
    names = [n for n in registry if any(n in r["exercises"] for r in rows)]
    out = {}
    for n in names:
        counts = Counter(r["exercises"][n]["status"] for r in rows if n in r["exercises"])
        mis = Counter(r["exercises"][n]["misconception"] for r in rows
                      if n in r["exercises"] and r["exercises"][n]["misconception"])
        out[n] = {"number": registry[n].number, **{s: counts.get(s, 0) for s in STATUSES},
                  "misconceptions": dict(mis.most_common())}
    return out


def render(rows, summary) -> str:
    names = list(summary)
    width = max([len("submission")] + [len(Path(r["submission"]).name) for r in rows])
    lines = ["  ".join([f"{'submission':{width}s}"] + [f"{summary[n]['number']:>4s}" for n in names]
                       + ["  status"])]
    for r in rows:
        cells = [f"{MARK[r['exercises'].get(n, {}).get('status')]:>4s}" for n in names]
        lines.append("  ".join([f"{Path(r['submission']).name:{width}s}"] + cells
                               + [f"  {r['status']} ({r['seconds']:.0f} s)"]))
    lines.append("")
    lines.append(f"{'exercise':34s} {'passed':>6s} {'failed':>6s} {'not att.':>8s} {'error':>5s}  "
                 "most common mistake")
    for n, s in summary.items():
        top = next(iter(s["misconceptions"].items()), None)
        lines.append(f"{s['number'] + ' ' + n:34s} {s['passed']:6d} {s['failed']:6d} "
                     f"{s['not attempted']:8d} {s['error']:5d}  {f'{top[0]} ({top[1]})' if top else ''}")
    lines.append("")
    lines.append("ok = passed, FAIL = failed, - = not attempted, ERR = no verdict (crash, timeout), "
                 "blank = not in that notebook")
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def report(submissions, out_dir="exercises-report", timeout: float = 300, progress=print) -> dict:
    """Run every submission, print the table, write out_dir/report.csv and report.json."""
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise MinipeftError(f"--timeout must be > 0 seconds, got {timeout}.")
    paths = collect(submissions)
    rows = []
    for i, p in enumerate(paths, start=1):
        row = run_submission(p, timeout, EXERCISES)
        if progress:
            progress(f"[{i}/{len(paths)}] {p}: {row['status']} ({row['seconds']:.0f} s)")
        rows.append(row)
    summary = summarise(rows, EXERCISES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = list(summary)
    writer.writerow(["submission", "status", "seconds"] + names)
    for r in rows:
        writer.writerow([r["submission"], r["status"], r["seconds"]]
                        + [r["exercises"].get(n, {}).get("status", "") for n in names])
    _write(out / "report.csv", buf.getvalue())
    result = {"submissions": rows, "summary": summary}
    _write(out / "report.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    if progress:
        progress("")
        progress(render(rows, summary))
        progress(f"\nwrote {out / 'report.csv'} and {out / 'report.json'}")
    return result


# ------------------------------------------------------------------ the command line
def _run_args(args) -> None:
    check_output_folder(args.out, "--out")        # a file there: a sentence before any notebook runs
    report(args.submissions, out_dir=args.out, timeout=args.timeout)


def add_parser(sub) -> None:
    """``minipeft exercises report ...``: called from minipeft/cli.py's build_parser."""
    p = sub.add_parser("exercises", help="classroom exercises: run and tabulate students' notebooks",
                       description="The exercises of minipeft.exercises. WARNING: a report runs "
                       "the students' code; run it in a sandbox or a throw-away VM.")
    ps = p.add_subparsers(dest="exercises_command", metavar="SUBCOMMAND")
    ps.required = True
    r = ps.add_parser("report", help="run submitted notebooks, each in its own process with a time "
                      "limit, and write a table submission x exercise (CSV and JSON)",
                      description="Runs each notebook in its own process and Jupyter kernel, "
                      "offline, in fast mode, with a time limit, and prints and writes a table "
                      "submission x exercise: passed / failed / not attempted / error, and a summary "
                      "per exercise. WARNING: it runs the students' code; use a sandbox or a VM.")
    r.add_argument("submissions", nargs="+", help="notebooks (.ipynb) or folders of them")
    r.add_argument("--out", default="exercises-report",
                   help="folder for report.csv and report.json (default exercises-report)")
    r.add_argument("--timeout", type=float, default=300,
                   help="seconds each notebook may run (default 300)")
    r.set_defaults(func=_run_args)


if __name__ == "__main__":                  # the child of run_submission
    if len(sys.argv) == 6 and sys.argv[1] == "--execute":
        sys.exit(_execute(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    sys.exit("usage: python -m minipeft.exercises.report --execute NOTEBOOK WORKDIR TIMEOUT PIDFILE "
             "(use `minipeft exercises report` instead)")
