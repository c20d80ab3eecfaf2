"""The benchmark harness runs end to end on a tiny GPT-2 and prints every row.

Smoke tests only: no time is asserted (timings come from running the benchmark by
hand, DEVELOPERS.md). What is asserted: every section prints its rows with numbers,
every PEFT method is either measured or skipped with a printed reason, the FLOP
count follows its formula, and bad flags are refused with a message.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from minipeft import bench

TINY = ["--quick", "--reps", "1", "--warmup", "0", "--pause", "0"]
NUMBER = r"[\d,]+\.\d+"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One thread per library in the memory children (the torch test sets torch's own):
    other tests may run alongside, and spinning thread pools on an oversubscribed CPU
    make a smoke run slow."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")


def run_bench(capsys, *flags):
    assert bench.main(TINY + list(flags)) == 0
    return capsys.readouterr().out


def row(out: str, label: str, after: str = "") -> str:
    """The first line starting with ``label`` (after the line containing ``after``)."""
    lines = out.split(after, 1)[1].splitlines() if after else out.splitlines()
    found = [ln for ln in lines if ln.startswith(label)]
    assert found, f"no row {label!r} in:\n{out}"
    return found[0]


def test_minipeft_alone_prints_every_section(capsys):
    out = run_bench(capsys, "--no-torch")
    for label in ("LoRA training step, tokens/s", "  the same, first half of the labels -100",
                  "forward (logits, no grad), tokens/s",
                  "greedy decode, KV cache, batch 1, new tokens/s",
                  "training step peak memory, MiB over set-up"):
        r = row(out, label)
        assert re.search(NUMBER, r[len(label):]), r               # minipeft's number
        assert "—" in r                                           # no torch column
    assert re.search(r"peak \(FLOP-weighted\) " + NUMBER, out)
    assert re.search(r"minipeft: " + NUMBER + r" GFLOP/s = \d+% of the peak \(target ≥ 85%\)", out)
    for op in ("embedding fwd", "layernorm fwd", "linear fwd", "LoRA fwd", "attention fwd",
               "gelu fwd", "lm_head + loss", "attention bwd", "LoRA bwd",
               "linear bwd", "layernorm bwd", "AdamW step", "other"):
        assert re.search(r"\d+\.\d+%", row(out, op)), op
    for label, _ in bench.METHODS:                                # measured, or a reason why not
        r = row(out, label + "  ", after="per PEFT method")
        assert re.search(r"\d+\.\d+\s+\d+\.\d+$", r) or "skipped:" in r, r
    assert re.search(r"^LoRA\s.*\s1\.00$", out, re.M)             # LoRA against itself
    assert "machine:" in out and "reproduce: python -m minipeft.bench --quick" in out
    machine = row(out, "machine:")                                # what the numbers were measured on
    info = bench.machine_info(False)
    assert info["vendor"] in machine and info["simd"] in machine and info["blas"] in machine


def test_machine_info_names_the_cpu_and_the_blas_kernel():
    info = bench.machine_info(False)
    assert info["cpu"] and info["vendor"] and info["cores"] >= 1
    if "openblas" in info["blas"].lower() and bench.openblas_runtime():
        assert "kernels" in info["blas"] and "threads" in info["blas"]   # the kernel picked for this CPU


def test_masked_labels_step_scores_only_the_second_half():
    from minipeft.bench.models import half_masked_labels
    ids = np.arange(12).reshape(2, 6)
    labels = half_masked_labels(ids)
    assert (labels[:, :3] == -100).all() and (labels[:, 3:] == ids[:, 3:]).all()


def test_against_torch_fills_both_columns(capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run_bench(capsys, "--only", "train,masked,forward,decode,memory")
    finally:
        torch.set_num_threads(threads)
    for label in ("LoRA training step", "  the same, first half", "forward (logits, no grad)",
                  "greedy decode", "training step peak memory"):
        r = row(out, label)
        assert len(re.findall(NUMBER, r.split("≥")[0].split("≤")[0])) == 3, r   # ours, theirs, ratio
    # The same random weights on both sides: float32 logits agree as the suite's
    # float32 comparisons do (sums over C in another order, tolerance 1e-4).
    diff = float(re.search(r"max\|a−b\|/max\|b\| = (\S+?),", out).group(1))
    assert diff < 1e-4
    assert "profile" not in out and "per PEFT method" not in out   # --only was obeyed


def test_lora_flop_count_follows_the_formula():
    cfg = bench.BenchConfig()                                     # GPT-2 124M, 4 × 128, r=8, c_attn
    N, T, C, V, L, r = 512, 128, 768, 50257, 12, 8
    expected = L * (48 * N * C * C + 12 * N * T * C) + 4 * N * C * V + L * 6 * N * r * (C + 3 * C)
    assert bench.lora_step_flops(cfg) == expected


@pytest.mark.parametrize("flags, message", [
    (["--only", "train,nope"], "unknown section"),
    (["--reps", "0"], "--reps must be >= 1"),
    (["--seq", "100"], "n_positions"),                            # --quick has n_positions 64
])
def test_bad_flags_are_refused(capsys, flags, message):
    assert bench.main(TINY + ["--no-torch"] + flags) == 1
    assert message in capsys.readouterr().err


def test_the_profiler_times_one_model_and_changes_no_module():
    """The profiler is explicit: it installs a timed ops table and hooks on the model it is
    given and the optimiser's step, and takes them out after; no module is patched."""
    import minipeft.kernels.lora
    import minipeft.kernels.ops
    import minipeft.ops
    import minipeft.peft.lora
    from minipeft.bench.config import QUICK
    from minipeft.bench.models import batch_ids, minipeft_lora, minipeft_random
    from minipeft.bench.profile import TimedOps, profiled
    modules = (minipeft.ops, minipeft.kernels.ops, minipeft.kernels.lora, minipeft.peft.lora)
    before = {m: dict(vars(m)) for m in modules}
    cfg = bench.BenchConfig(**QUICK)
    pm, opt = minipeft_lora(minipeft_random(cfg), cfg)
    ids, _ = batch_ids(cfg)
    kernels = pm.ops
    with profiled(pm, opt) as timer:
        assert isinstance(pm.ops, TimedOps) and "_linear" in vars(pm)
        opt.step(pm.loss_and_grads(ids, ids)[1])
        assert all(vars(m) == before[m] for m in modules)
    assert pm.ops is kernels and "_linear" not in vars(pm) and "step" not in vars(opt)
    for op in ("linear fwd (x W + b)", "LoRA fwd", "linear bwd (dout Wᵀ)", "LoRA bwd",
               "layernorm fwd", "attention bwd", "lm_head + loss, fwd+bwd", "AdamW step"):
        assert timer.seconds[op] > 0, op
