"""The machinery of an exercise: a verdict, the misconceptions, and the check itself.

A check runs, in order (and stops at the first thing that is wrong):

1. the signature: the student's function takes the exercise's arguments;
2. for each seeded random case (float64): the call (NotImplementedError -> "not
   attempted", any other exception -> failed, summarised in one line), the number of
   outputs, their shapes and dtypes, then the values against ``reference`` with
   max|yours - ref| / max|ref| shown beside its threshold;
3. finite differences for backward exercises (the gradients against central
   differences of the package's forward);
4. torch (or peft) when installed: the same case computed by the library people use.

When something is wrong the check *diagnoses* it: it computes each known wrong answer
(a ``Misconception``) on the same inputs, and when the student's output equals one of
them it prints that misconception's hint. A hint asks a question; it never gives the
answer. An output that matches no known mistake gets the plain numbers.

A check prints its verdict and returns it; it raises ``ExerciseFailed`` only with
``strict=True`` or ``MINIPEFT_STRICT=1`` in the environment (for CI).

With ``MINIPEFT_EXERCISES_RECORD=<file>`` in the environment every verdict is also
appended to that file as one JSON line (``minipeft exercises report`` collects them).
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import MinipeftError
from ..testing import numerical_gradient

RECORD_ENV = "MINIPEFT_EXERCISES_RECORD"
STRICT_ENV = "MINIPEFT_STRICT"
MATCH_TOL = 1e-7          # a student's output "is" a known wrong answer within this
DISTINCT_TOL = 1e-5       # ... and that wrong answer differs from the reference by more


class ExerciseFailed(MinipeftError, AssertionError):
    """Raised by a check with strict=True (or MINIPEFT_STRICT=1) when the verdict is not a pass."""


@dataclass
class Verdict:
    """The outcome of a check. ``passed``: True, False, or None (not attempted)."""
    exercise: str
    passed: bool | None
    message: str
    hint: str | None = None
    misconception: str | None = None          # the key of the diagnosed wrong answer
    details: list = field(default_factory=list)

    @property
    def status(self) -> str:
        return {True: "passed", False: "failed", None: "not attempted"}[self.passed]

    def __str__(self) -> str:
        return self.message

    def _repr_pretty_(self, p, cycle):        # IPython: the message, not the dataclass
        p.text(f"Verdict({self.exercise}: {self.status})")


@dataclass
class Misconception:
    """A typical wrong answer: ``wrong`` has the reference's signature and computes it.
    ``detect(outputs, case) -> bool``, optional, recognises it by a property instead
    (an overflow: nan where the reference is finite), when values cannot be matched."""
    key: str
    hint: str
    wrong: Callable
    detect: Callable | None = None


class _Mismatch(Exception):
    """Internal: the student's output is wrong; carries the verdict's text."""

    def __init__(self, text, misconception=None, hinted=False):
        super().__init__(text)
        self.text, self.misconception, self.hinted = text, misconception, hinted


def max_rel(a, b) -> float:
    """max|a - b| / max|b| (max|a - b| when b is all zero). Non-finite entries (nan, ±inf)
    must sit at the same places in both; there they count as equal (an overflow is an
    overflow, whichever of nan or inf it ends in)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    na, nb = ~np.isfinite(a), ~np.isfinite(b)
    if na.any() or nb.any():
        if not np.array_equal(na, nb):
            return float("inf")
        a, b = a[~na], b[~nb]
        if a.size == 0:
            return 0.0
    diff = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b)))
    return diff / scale if scale > 0 else diff


def _as_outputs(out, n: int):
    """The student's return value as a tuple of n things (or a message why not)."""
    if n == 1:
        if isinstance(out, tuple) and len(out) == 1:
            out = out[0]
        if isinstance(out, (tuple, list)) and not _numeric_sequence(out):
            return None, f"returned {len(out)} things; it should return one"
        return (out,), None
    if not isinstance(out, (tuple, list)):
        return None, f"returned one {type(out).__name__}; it should return {n} things (a tuple)"
    if len(out) != n:
        return None, f"returned {len(out)} things; it should return {n}"
    return tuple(out), None


def _numeric_sequence(x) -> bool:
    try:
        return np.asarray(x).dtype.kind in "fiub"
    except Exception:
        return False


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {value.shape}"
    return repr(value)


def _summarise_exception(exc: BaseException) -> str:
    """One line: the exception and the line of the student's code where it happened."""
    tb = traceback.extract_tb(exc.__traceback__)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # minipeft/
    theirs = [f for f in tb if not os.path.abspath(f.filename).startswith(package)
              and "site-packages" not in f.filename and "/numpy/" not in f.filename]
    where = ""
    if theirs or tb:
        f = (theirs or tb)[-1]                      # the student's own line when there is one
        where = f" (in {f.name}, line {f.lineno}: {f.line.strip() if f.line else '?'})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}"


class Exercise:
    """One exercise: the student's signature, the package's reference, cases, misconceptions.

    ``cases(rng)`` -> list of dicts (argument name -> value), seeded; the first cases
    are the diagnostic ones (square shapes, large epsilons ...: where each known wrong
    answer differs from the reference). ``outputs`` names what the function returns.
    ``invoke(fn, case)`` calls a function on a case (default: positionally, on deep
    copies, so that a student who writes into an input changes nothing of ours).
    ``finite_differences(fn, rng)`` -> [(name, max_rel)] and ``with_torch(fn, rng)``
    -> (library name, [(name, max_rel)]) or None, optional.
    ``on_exception(exc)`` -> a hint for an exception, or None."""

    def __init__(self, number: str, name: str, title: str, args: tuple[str, ...],
                 outputs: tuple[str, ...], reference: Callable, cases: Callable,
                 misconceptions: list[Misconception] = (), tol: float = 1e-8,
                 finite_differences: Callable | None = None, fd_tol: float = 1e-6,
                 with_torch: Callable | None = None, torch_tol: float = 1e-10,
                 invoke: Callable | None = None, on_exception: Callable | None = None,
                 integer: bool = False, doc: str = ""):
        self.number, self.name, self.title = number, name, title
        self.args, self.outputs = tuple(args), tuple(outputs)
        self.reference = reference
        self.cases = cases
        self.misconceptions = list(misconceptions)
        keys = [m.key for m in self.misconceptions]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{name}: two misconceptions share a key")
        self.tol, self.fd_tol, self.torch_tol = tol, fd_tol, torch_tol
        self.finite_differences, self.with_torch = finite_differences, with_torch
        self._invoke = invoke
        self.on_exception = on_exception
        self.integer = integer
        self.doc = doc

    def __repr__(self):
        return f"<Exercise {self.number} {self.name}({', '.join(self.args)}): {self.title}>"

    @property
    def part(self) -> int:
        return int(self.number.split(".")[0])

    def hint(self, key: str) -> str:
        return next(m.hint for m in self.misconceptions if m.key == key)

    # ------------------------------------------------------------ calling
    def invoke(self, fn, case: dict):
        if self._invoke is not None:
            return self._invoke(fn, copy.deepcopy(case))
        return fn(*copy.deepcopy([case[a] for a in self.args]))

    def _case_text(self, case: dict) -> str:
        parts = []
        for a in (self.args if all(a in case for a in self.args) else case):
            v = case[a]
            parts.append(f"{a} {v.shape}" if isinstance(v, np.ndarray) else
                         f"{a}={v!r}" if isinstance(v, (int, float, str, bool, type(None))) else a)
        return ", ".join(parts)

    # ------------------------------------------------------------ the check
    def check(self, fn, strict: bool = False) -> Verdict:
        """Check ``fn``; print the verdict and return it (raise only when strict)."""
        verdict = self._verdict(fn)
        print(verdict.message)
        _record(self, verdict)
        if (strict or os.environ.get(STRICT_ENV, "") not in ("", "0")) and verdict.passed is not True:
            raise ExerciseFailed(verdict.message)
        return verdict

    def _head(self, ok: str) -> str:
        return f"[{ok}] Exercise {self.number} {self.name}: "

    def _fail(self, text, misconception=None, details=()) -> Verdict:
        hint = self.hint(misconception) if misconception else None
        message = self._head("FAIL") + text + (f"\n  Hint: {hint}" if hint else "")
        return Verdict(self.name, False, message, hint, misconception, list(details))

    def _verdict(self, fn) -> Verdict:
        if not callable(fn):
            return self._fail(f"expected a function, got {type(fn).__name__}.")
        problem = self._signature_problem(fn)
        if problem:
            return self._fail(problem)
        rng = np.random.default_rng(0)
        details, worst = [], 0.0
        cases = self.cases(rng)
        for i, case in enumerate(cases):
            try:
                out = self.invoke(fn, case)
            except NotImplementedError:
                msg = (self._head("NOT ATTEMPTED") + "the function still raises NotImplementedError: "
                       "replace that line with your code, run the cell, and check again.")
                return Verdict(self.name, None, msg)
            except Exception as exc:                        # the student's bug, never ours
                hint = self.on_exception(exc) if self.on_exception else None
                text = (f"your function raised {_summarise_exception(exc)} on case {i + 1} "
                        f"({self._case_text(case)}).")
                v = self._fail(text)
                if hint:
                    v.message += f"\n  Hint: {hint}"
                    v.hint = hint
                return v
            try:
                ref = self.invoke(self.reference, case)
            except Exception as exc:                        # ours: say so, never blame the student
                return Verdict(self.name, False, self._head("ERROR") + "minipeft's own reference "
                               f"failed ({_summarise_exception(exc)}): not your mistake. Please "
                               "report it with this message.")
            try:
                rels = self._compare(out, ref, case, i)
            except _Mismatch as m:
                if m.hinted:                                # the hints are in the text already
                    v = self._fail(m.text, None, details)
                    v.misconception, v.hint = m.misconception, self.hint(m.misconception)
                    return v
                return self._fail(m.text, m.misconception, details)
            worst = max([worst] + rels)
            details.append({"case": i + 1, "max_rel": max(rels, default=0.0)})
        lines = [f"{len(cases)} seeded random cases, max relative error {worst:.1e} "
                 f"<= {self.tol:g} (float64)" if not self.integer
                 else f"{len(cases)} cases, every count exact"]
        if self.finite_differences is not None:
            errs = self.finite_differences(fn, np.random.default_rng(1))
            bad = [(n, e) for n, e in errs if not e <= self.fd_tol]
            if bad:
                text = "; ".join(f"{n}: {e:.1e}" for n, e in bad)
                return self._fail(f"the gradients disagree with finite differences ({text} > "
                                  f"{self.fd_tol:g}).", details=details)
            lines.append(f"finite differences agree ({max(e for _, e in errs):.1e} <= {self.fd_tol:g})")
        if self.with_torch is not None:
            got = _try_torch(self.with_torch, fn)
            if got is None:
                lines.append("torch not installed: its comparison skipped")
            else:
                lib, errs = got
                bad = [(n, e) for n, e in errs if not e <= self.torch_tol]
                if bad:
                    text = "; ".join(f"{n}: {e:.1e}" for n, e in bad)
                    return self._fail(f"{lib} disagrees ({text} > {self.torch_tol:g}).", details=details)
                lines.append(f"{lib} agrees ({max(e for _, e in errs):.1e} <= {self.torch_tol:g})")
        return Verdict(self.name, True, self._head("PASS") + "; ".join(lines) + ".", details=details)

    def _signature_problem(self, fn) -> str | None:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None
        try:
            sig.bind(*self.args)
        except TypeError:
            theirs = ", ".join(sig.parameters)
            return (f"your function takes ({theirs}); the exercise calls it with "
                    f"({', '.join(self.args)}). Keep the signature of the cell.")
        return None

    def _compare(self, out, ref, case, i) -> list[float]:
        n = len(self.outputs)
        ref_t = ref if n > 1 else (ref,)
        outs, why = _as_outputs(out, n)
        if why:
            raise _Mismatch(f"your function {why} ({', '.join(self.outputs)}).",
                            self._diagnose_structure(out, case, n))
        rels = []
        for j, (name, o, r) in enumerate(zip(self.outputs, outs, ref_t)):
            r_arr = np.asarray(r)
            try:
                o_arr = np.asarray(o)
            except Exception:
                raise _Mismatch(f"{name} is a {type(o).__name__}, not an array or a number.")
            if o_arr.dtype.kind not in "fiub":
                raise _Mismatch(f"{name} is {_describe(o)}, not numbers.")
            if o_arr.shape != r_arr.shape:
                raise _Mismatch(f"{name} has shape {o_arr.shape}; it should have shape {r_arr.shape} "
                                f"(case {i + 1}: {self._case_text(case)}).",
                                self._diagnose(outs, case, shapes_only=True))
            if self.integer:
                if o_arr.dtype.kind not in "iu" and not (o_arr == np.round(o_arr)).all():
                    raise _Mismatch(f"{name} is {o!r}: a count is a whole number.")
            elif r_arr.dtype.kind == "f" and o_arr.dtype != r_arr.dtype:
                raise _Mismatch(f"{name} is {o_arr.dtype}; with {r_arr.dtype} inputs it should be "
                                f"{r_arr.dtype} too (did something convert it?).")
            rels.append(max_rel(o_arr, r_arr))
        limit = 0 if self.integer else self.tol
        bad = [j for j, rel in enumerate(rels) if not rel <= limit]
        if not bad:
            return rels
        mis = self._diagnose(outs, case)
        lines = []
        for j in bad:
            name, o_arr, r_arr = self.outputs[j], np.asarray(outs[j]), np.asarray(ref_t[j])
            if self.integer:
                lines.append(f"{name} for ({self._case_text(case)}) is {o_arr.item():,}; that is "
                             "not the count.")
            elif not lines:
                lines.append(f"{name} differs from the reference on case {i + 1} "
                             f"({self._case_text(case)}): max relative error {rels[j]:.1e} > "
                             f"{self.tol:g}" + _where(o_arr, r_arr) + ".")
            else:
                lines.append(f"{name} differs too: max relative error {rels[j]:.1e}"
                             + _where(o_arr, r_arr) + ".")
        text = "\n  ".join(lines)
        if len(bad) < len(self.outputs) and not self.integer:
            text += "\n  (" + ", ".join(self.outputs[j] for j in range(len(self.outputs))
                                        if j not in bad) + " agree.)"
        if not mis:
            partial = self._diagnose_each(outs, case, bad)
            if partial:
                by_key = {}
                for j, k in partial:
                    by_key.setdefault(k, []).append(self.outputs[j])
                text += "".join(f"\n  Hint for {', '.join(names)}: {self.hint(k)}"
                                for k, names in by_key.items())
                raise _Mismatch(text, partial[0][1], hinted=True)
            text += ("\n  It matches none of the mistakes this check knows: compare your "
                     "lines with the equations above, one at a time.")
        raise _Mismatch(text, mis)

    def _diagnose_each(self, outs, case, bad):
        """[(output index, key)]: for each wrong output, a known mistake giving that output
        (when the student's outputs as a whole match none: two mistakes at once)."""
        ref = self.invoke(self.reference, case)
        ref_t = ref if len(self.outputs) > 1 else (ref,)
        found = []
        for j in bad:
            for m in self.misconceptions:
                w = self._wrong_outputs(m, case)
                if w is None or len(w) != len(outs):
                    continue
                try:
                    a, o = np.asarray(w[j], dtype=np.float64), np.asarray(outs[j], dtype=np.float64)
                except Exception:
                    continue
                if a.shape == o.shape == np.shape(ref_t[j]) and max_rel(a, ref_t[j]) > DISTINCT_TOL \
                        and max_rel(o, a) <= MATCH_TOL:
                    found.append((j, m.key))
                    break
        return found

    def _wrong_outputs(self, m: Misconception, case):
        try:
            with np.errstate(all="ignore"):
                w = self.invoke(m.wrong, case)
        except Exception:
            return None
        n = len(self.outputs)
        return w if n > 1 else (w,)

    def _diagnose_structure(self, out, case, n):
        """The student returned the wrong number of things: a known mistake that does too?"""
        for m in self.misconceptions:
            w = self._wrong_outputs(m, case)
            if w is None:
                continue
            w = w[0] if n == 1 else w
            if isinstance(out, (tuple, list)) and isinstance(w, (tuple, list)) and len(w) == len(out):
                return m.key
        return None

    def _diagnose(self, outs, case, shapes_only=False):
        """The key of the known wrong answer the student's outputs equal, or None."""
        ref = self.invoke(self.reference, case)
        ref_t = ref if len(self.outputs) > 1 else (ref,)
        shape_match = None
        for m in self.misconceptions:
            w = self._wrong_outputs(m, case)
            if w is None:
                continue
            try:
                ws = [np.asarray(x, dtype=np.float64) for x in w]
                os_ = [np.asarray(x, dtype=np.float64) for x in outs]
            except Exception:
                continue
            if len(ws) != len(os_) or any(a.shape != b.shape for a, b in zip(ws, os_)):
                continue
            same_as_ref = all(a.shape == np.shape(r) and max_rel(a, r) <= DISTINCT_TOL
                              for a, r in zip(ws, ref_t))
            if same_as_ref:
                continue                                    # this case cannot tell it apart
            if all(max_rel(o, a) <= MATCH_TOL for o, a in zip(os_, ws)):
                return m.key
            if shapes_only and shape_match is None and any(
                    a.shape != np.shape(r) for a, r in zip(ws, ref_t)):
                shape_match = m.key
        if shape_match is None and not shapes_only:
            for m in self.misconceptions:
                try:
                    if m.detect is not None and m.detect(outs, case):
                        return m.key
                except Exception:
                    continue
        return shape_match


def _where(o, r) -> str:
    """Where the largest difference is, and the two values (MIT's "expected X but got Y")."""
    if o.ndim == 0:
        return f"; yours {float(o):.6g}, expected {float(r):.6g}"
    with np.errstate(invalid="ignore"):
        d = np.abs(o.astype(np.float64) - r.astype(np.float64))
    d = np.where(np.isnan(d), np.inf, d)
    idx = np.unravel_index(int(np.argmax(d)), d.shape)
    return f"; at index {tuple(int(i) for i in idx)} yours {o[idx]:.6g}, expected {r[idx]:.6g}"


def _try_torch(with_torch, fn):
    try:
        import torch  # noqa: F401  (optional: is it installed? then the torch reference runs)
    except ImportError:
        return None
    return with_torch(fn, np.random.default_rng(2))


def _record(ex: Exercise, v: Verdict) -> None:
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    line = json.dumps({"exercise": ex.name, "number": ex.number, "status": v.status,
                       "misconception": v.misconception, "message": v.message,
                       "time": time.time()})
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:                                    # never stop the student's notebook
        print(f"(could not record the verdict in {path}: {e})")


# ------------------------------------------------------------------ helpers for the modules
def fd_errors(scalar: Callable[[], float], wrt: dict, analytic: dict, h: float = 1e-6):
    """[(name, max_rel)] of analytic gradients against central differences of scalar()."""
    out = []
    for name, x in wrt.items():
        num = numerical_gradient(scalar, x, h)
        a = np.asarray(analytic[name], dtype=np.float64)
        if a.shape != num.shape:
            out.append((name, float("inf")))
        else:
            out.append((name, max_rel(a, num)))
    return out


def torch_errors(pairs: dict) -> list:
    """{name: (ours, torch tensor)} -> [(name, max_rel)]."""
    return [(n, max_rel(np.asarray(a, dtype=np.float64), t.detach().numpy()))
            for n, (a, t) in pairs.items()]


def shape_error_hint(text: str) -> Callable[[BaseException], str | None]:
    """on_exception for a matmul/broadcast shape error: the layout hint ``text``."""
    def hint(exc):
        s = str(exc)
        if isinstance(exc, ValueError) and ("matmul" in s or "shape" in s or "broadcast" in s
                                            or "aligned" in s):
            return text
        return None
    return hint

