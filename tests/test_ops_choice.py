"""The model's choice of ops survives every way a model is made from another (issue 16 §3).

``use_kernels = False`` (the plain NumPy twins) and a table set through ``model.ops``
carry over to a PEFT wrapper, ``astype``, ``PeftModel.from_pretrained``,
``merge_and_unload`` and ``unload``. Proof that the twins really run: every Numba kernel
is replaced by a function that fails, so a wrapper that went back to the kernels would
raise. And kernels import nothing from ``minipeft/peft/``: what a kernel shares with its
twin (constants, a cache's fields) is its own copy, held equal here.
"""
from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_IDS as IDS
from conftest import tiny_gpt2

import minipeft
from minipeft import (
    GPT2,
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from minipeft import ops as twins

KERNELS = Path(minipeft.__file__).parent / "kernels"
METHODS = {
    "lora": lambda: LoraConfig(r=2, target_modules="all-linear", fan_in_fan_out=True),
    "dora": lambda: LoraConfig(r=2, use_dora=True, fan_in_fan_out=True),
    "ia3": lambda: IA3Config(fan_in_fan_out=True),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=3),
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=3),
    "bottleneck": lambda: BottleneckConfig(reduction_factor=4),
}
MERGEABLE = ("lora", "ia3")


def tiny(use_kernels=False) -> GPT2:
    model = tiny_gpt2()
    model.use_kernels = use_kernels
    return model


def wrap(model, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, METHODS[method]())


@pytest.fixture
def no_kernels(monkeypatch):
    """Every public function of every kernel module fails when called."""
    for path in sorted(KERNELS.glob("*.py")):
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"minipeft.kernels.{path.stem}")
        for name, fn in vars(module).items():
            own = getattr(fn, "__module__", "") == module.__name__       # not a re-exported twin
            if callable(fn) and not name.startswith("_") and own and not isinstance(fn, type):
                def fail(*args, _name=f"{path.stem}.{name}", **kwargs):
                    raise AssertionError(f"kernel {_name} ran with use_kernels = False")
                monkeypatch.setattr(module, name, fail)


def runs_twins(model):
    """The model runs, forward and backward, and says it runs the twins."""
    assert model.use_kernels is False and model.ops is twins
    loss, grads = model.loss_and_grads(IDS, IDS)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("method", METHODS)
def test_use_kernels_false_survives_wrapping_and_astype(no_kernels, method):
    pm = wrap(tiny(), method).train()
    runs_twins(pm)
    runs_twins(pm.astype(np.float64))
    runs_twins(pm.astype(np.float64).astype(np.float32))


@pytest.mark.parametrize("method", METHODS)
def test_use_kernels_false_survives_loading(no_kernels, method, tmp_path):
    wrap(tiny(), method).save_pretrained(tmp_path)
    runs_twins(PeftModel.from_pretrained(tiny(), tmp_path, is_trainable=True))
    pm = PeftModel.from_pretrained(tiny(), tmp_path)
    assert pm.use_kernels is False and np.isfinite(pm(IDS)).all()


@pytest.mark.parametrize("method", MERGEABLE)
def test_use_kernels_false_survives_merge_and_unload(no_kernels, method):
    merged = wrap(tiny(), method).merge_and_unload()
    assert type(merged) is GPT2
    runs_twins(merged)


@pytest.mark.parametrize("method", METHODS)
def test_unload_gives_the_base_with_the_wrappers_choice(no_kernels, method):
    base = tiny()
    assert wrap(base, method).unload() is base and base.use_kernels is False
    base = tiny(use_kernels=True)
    pm = wrap(base, method)
    assert pm.use_kernels is True                    # the base's choice, kernels on
    pm.use_kernels = False                           # changed on the wrapper ...
    runs_twins(pm.unload())                          # ... the base given back runs it too


def test_an_ops_table_survives_every_path(tmp_path):
    """A table set through ``model.ops`` (a profiler's, here one that counts calls) is
    what the wrapped, cast, loaded and merged models call."""
    calls = []

    class Counting:
        def __getattr__(self, name):
            fn = getattr(twins, name)
            return lambda *a, **k: (calls.append(name), fn(*a, **k))[1]

    base = tiny()
    base.ops = table = Counting()
    pm = wrap(base, "lora")
    pm.save_pretrained(tmp_path)
    made = {"wrapped": pm, "astype": pm.astype(np.float64), "merged": pm.merge_and_unload(),
            "loaded": PeftModel.from_pretrained(base, tmp_path), "unloaded": pm.unload(),
            "base astype": base.astype(np.float64)}
    for what, model in made.items():
        assert model.ops is table, what
        calls.clear()
        model(IDS)
        assert "layernorm_forward" in calls and "attention_forward" in calls, what
    base.ops = None                                  # back to what use_kernels picks
    assert base.ops is twins


def test_kernels_import_nothing_from_peft():
    for path in sorted(KERNELS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert "peft" not in module.split("."), f"{path.name} imports {module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("minipeft.peft") for a in node.names), path.name


def test_kernel_copies_equal_their_twins():
    from minipeft.kernels import bottleneck as bk
    from minipeft.kernels import prompt as pk
    from minipeft.peft import bottleneck as bt
    from minipeft.peft import prompt as pt
    assert bk.LEAKY_SLOPE == bt.LEAKY_SLOPE
    assert set(bk._CODE) == set(bt.ACTIVATIONS)
    from minipeft.kernels import lora as lk
    from minipeft.peft import lora as lt
    for kernel, twin, name in ((pk, pt, "PromptCache"), (lk, lt, "LoraCache"),
                               (lk, lt, "DoraCache"), (bk, bt, "BiasActCache"),
                               (bk, bt, "ScaleCache")):
        assert getattr(kernel, name)._fields == getattr(twin, name)._fields, name
