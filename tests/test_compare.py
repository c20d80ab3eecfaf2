"""``minipeft compare``: the quick run writes every row, the files and the figure, and the
trained methods lower the eval loss; bad arguments are refused before any work.

No time or metric threshold: the only claim about the numbers is that training lowers
the held-out loss below the untrained base model's.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from minipeft import compare
from minipeft.cli import main
from minipeft.errors import ConfigError, InputError, MinipeftError

KEYS = ("method", "trainable_params", "peak_memory_mib", "seconds_per_step", "eval_loss",
        "exact_match", "slot_error", "trainable_percent", "optimizer_state_bytes", "train_loss",
        "adapter_bytes", "learning_rate")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    assert main(["compare", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_run_writes_every_row_the_files_and_the_figure(quick_run):
    rows = json.loads((quick_run / "results.json").read_text())
    assert [r["method"] for r in rows] == ["base", *compare.METHODS]
    for r in rows:
        assert all(k in r for k in KEYS), set(KEYS) - set(r)
    base, trained = rows[0], rows[1:]
    assert base["trainable_params"] == 0 and base["peak_memory_mib"] is None
    for r in trained:
        assert r["trainable_params"] > 0 and r["peak_memory_mib"] > 0 and r["seconds_per_step"] > 0
        assert r["optimizer_state_bytes"] == 2 * 4 * r["trainable_params"]   # two float32 moments
        assert 0 <= r["exact_match"] <= 1 and 0 <= r["slot_error"] <= 1
        assert len(r["eval_curve"]) >= 2 and r["eval_curve"][-1][1] == r["eval_loss"]
        assert r["eval_loss"] < base["eval_loss"], f"{r['method']} did not lower the eval loss"
        files = {p.name for p in (quick_run / "adapters" / r["method"]).iterdir()}
        want = {"config.json", "model.safetensors"} if r["method"] == "full" else \
            {"adapter_config.json", "adapter_model.safetensors"}
        assert want <= files and r["adapter_bytes"] > 0
    full = next(r for r in trained if r["method"] == "full")
    assert full["trainable_percent"] == pytest.approx(100.0)
    assert all(r["trainable_params"] < full["trainable_params"] for r in trained if r is not full)
    with open(quick_run / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["method"] for t in table] == [r["method"] for r in rows]
    assert float(table[1]["eval_loss"]) == pytest.approx(rows[1]["eval_loss"])
    png = (quick_run / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_saved_adapter_is_the_trained_model(quick_run):
    from minipeft import GPT2, PeftModel
    pm = PeftModel.from_pretrained(GPT2.from_pretrained("tiny-shakespeare"), quick_run / "adapters" / "lora")
    ids = np.array([[5, 6, 7, 8]])
    base = GPT2.from_pretrained("tiny-shakespeare")
    assert not np.allclose(pm(ids), base(ids))                       # trained: not the base model


def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown method.*'qlora'.*choose from"):
        compare.run(methods="lora,qlora", out=tmp_path / "a")
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        compare.run(steps=0, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="learning rate of lora must be a number > 0"):
        compare.run(methods="lora", learning_rates={"lora": -1.0}, out=tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="exists and is not empty.*--overwrite"):
        compare.run(methods="lora", out=tmp_path / "full")
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()
    for argv, msg in ((["--methods", "lora,nope"], "unknown method"), (["--steps", "-3"], "--steps"),
                      (["--out", str(tmp_path / "full")], "exists and is not empty")):
        assert main(["compare", *argv, "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
    assert issubclass(ConfigError, MinipeftError)
