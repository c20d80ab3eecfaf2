"""Imports sit at the top of their module (issue 16): an import inside a function hides
the module's dependencies from a reader and can hide an import cycle. The only ones left
are optional or platform-specific dependencies, imported where they are needed so that
minipeft runs without them."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minipeft"

# top-level module -> why it may be imported inside a function
ALLOWED = {
    "torch": "optional: the torch reference side (bench, exercises, reading pytorch_model.bin)",
    "transformers": "optional: the bench's reference model",
    "peft": "optional: the bench's reference LoRA",
    "huggingface_hub": "optional: downloading from the hub (pip install 'minipeft[hub]')",
    "nbclient": "optional: executing a notebook (`minipeft exercises report`)",
    "nbformat": "optional: reading a notebook (`minipeft exercises report`)",
    "resource": "POSIX only: peak RSS in the bench's memory child",
}


def _function_local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import inside a function of ``path``;
    a relative import counts as "minipeft"."""
    found = []

    def walk(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if in_function and isinstance(child, ast.Import):
                found.extend((child.lineno, a.name.split(".")[0]) for a in child.names)
            elif in_function and isinstance(child, ast.ImportFrom):
                top = "minipeft" if child.level else child.module.split(".")[0]
                found.append((child.lineno, top))
            walk(child, inside)

    walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return found


def test_no_function_local_import_but_optional_dependencies():
    bad = [f"{path.relative_to(ROOT)}:{line}: import of {module} inside a function"
           for path in sorted(PACKAGE.rglob("*.py"))
           for line, module in _function_local_imports(path) if module not in ALLOWED]
    assert not bad, ("move these imports to the top of their module (an import cycle is fixed "
                     "by moving the shared code down a layer, not hidden):\n" + "\n".join(bad))


def test_the_check_sees_a_local_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    from .x import y\n    import json, torch\n"
                    "    return y\n")
    assert _function_local_imports(path) == [(4, "minipeft"), (5, "json"), (5, "torch")]


def test_import_minipeft_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", "import minipeft; print(minipeft.__version__)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == __import__("minipeft").__version__
