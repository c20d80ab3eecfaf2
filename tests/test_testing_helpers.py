"""The comparison helpers students call: they report, and they fail when they should."""
from __future__ import annotations

import numpy as np
import pytest

from minipeft.testing import assert_close, cmp, grad_check, max_rel, rel_error


def test_cmp_prints_report(capsys):
    rel = cmp("logits", np.array([1.0, 2.0]), np.array([1.0, 2.5]), tol=1e-4)
    out = capsys.readouterr().out
    assert out.startswith("logits: max_abs 5.000e-01 max_rel 2.000e-01") and "NOT OK" in out
    assert rel == pytest.approx(0.2)


def test_assert_close_names_every_failure():
    ref = {"a": np.ones(3), "b": np.ones(3), "c": np.ones(3)}
    ours = {"a": np.ones(3), "b": np.ones(3) * 1.1, "c": np.ones(3) * 2}
    with pytest.raises(AssertionError, match=r"2 tensor\(s\).*\n  b:.*\n  c:"):
        assert_close(ours, ref, 1e-6, verbose=False)
    with pytest.raises(AssertionError, match="names differ"):
        assert_close({"a": np.ones(3)}, ref, 1e-6, verbose=False)
    with pytest.raises(AssertionError, match="shapes differ"):
        max_rel(np.ones(3), np.ones(4))


def test_rel_error_and_grad_check_catch_a_wrong_gradient():
    assert rel_error(np.array([1.0]), np.array([1.0])) == 0
    x = {"x": np.random.default_rng(0).standard_normal(5)}
    good = grad_check(lambda x: x ** 3, x, lambda d: {"x": 3 * x["x"] ** 2 * d})
    bad = grad_check(lambda x: x ** 3, x, lambda d: {"x": 2 * x["x"] ** 2 * d})
    assert good["x"] < 1e-8 and bad["x"] > 0.1
