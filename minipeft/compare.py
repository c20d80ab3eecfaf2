"""``minipeft compare``: every method on the demo task with one budget, side by side.

The LoRA paper answers "which method, at what cost?" with one table (E2E on GPT-2 M:
fine-tuning, adapters, prefix tuning, LoRA). This is that table in miniature, offline:
the bundled ``tiny-shakespeare`` GPT-2 learns the restaurant task
(``minipeft.tasks.restaurants``) with each method in turn, all with

    the same steps, batch size, training examples and order, seed, schedule
    (linear decay after a 5 % warm-up), clipping (1.0), AdamW without weight decay;

only the learning rate differs, each method's own, chosen by the sweep in
``benchmarks/compare_lr_sweep.py`` on a validation split (never on the 50 held-out
examples the table scores) and read from ``benchmarks/compare_lr_sweep.json``.

Each row: trainable parameters (count, % of the model), AdamW's state in bytes (two
moments per trained value), measured peak training memory, seconds per step, final
train loss (mean of the last 10 % of steps) and eval loss (the 50 held-out examples),
exact match and slot error of greedy completions of those examples, and the size of the
saved adapter. The base model (no training) is a row too.

Peak memory is measured with ``tracemalloc``, which sees every NumPy and Numba array
(both allocate through Python's tracked allocator) and Python object: after one untraced
warm-up step on a throw-away copy (Numba loads or compiles its kernels), tracing starts
before the method's model is loaded, the peak is reset just before the first step, and
that step's peak is reported — weights, adapter, AdamW's moments (made with the
optimiser), gradients and the step's activations together. BLAS's own scratch
buffers are not seen (the same for every method). At this model's size a child
process's peak RSS (as ``minipeft bench`` reads it for the 124M shape) would mostly
measure the interpreter, NumPy and Numba (~170 MiB resident after one forward pass of
the bundled model, against 55-110 MiB that training adds).
The traced step is slower, so it is left out of seconds per step.

Output (``--out``, never a non-empty folder unless ``overwrite``), written into a temp
folder that replaces ``out`` whole at the end: ``results.json`` (a list of rows, plus each
method's eval-loss curve), ``results.csv``, ``compare.png`` and ``adapters/<method>/`` in
peft's format (full fine-tuning: the whole model as a GPT-2 folder).
"""
from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import math
import os
import time
import tracemalloc
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
from tqdm.auto import tqdm

from .analysis import _new_figure
from .config import refuse_unknown_fields
from .demo import greedy_completions, one_line
from .errors import ConfigError, InputError, MinipeftError
from .io.atomic import atomic_folder
from .io.files import check_output_folder
from .io.jsonfile import read_json
from .model import GPT2
from .peft import (
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from .tasks.restaurants import make_examples, score
from .tokenizer import load_tokenizer
from .train.data import batches, encode_examples
from .train.plots import save_figure
from .train.trainer import Trainer, TrainingArguments, evaluate, example_batches

BUNDLED = "tiny-shakespeare"
SWEEP_FILE = Path(__file__).resolve().parent.parent / "benchmarks" / "compare_lr_sweep.json"
VAL_SEED_OFFSET = 2_000_003        # the validation split's seed (the held-out split's is seed + 1_000_003)


# ====================================================================== the methods
def method_configs():
    """name -> (label, what it trains, config factory: model config -> PEFT config or None)."""

    def lora(**kw):
        return lambda c: LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                                    fan_in_fan_out=True, **kw)
    return {
        "full": ("full fine-tuning", "every weight", lambda c: None),
        "lora": ("LoRA", "r=8, alpha=16, all linear layers", lora()),
        "rslora": ("rsLoRA", "r=8, alpha=16 (s = alpha/sqrt r), all linear layers", lora(use_rslora=True)),
        "dora": ("DoRA", "r=8, alpha=16, all linear layers, + magnitudes", lora(use_dora=True)),
        "ia3": ("IA3", "peft's placement: c_attn out, mlp.c_proj in",
                lambda c: IA3Config(fan_in_fan_out=True)),
        "prefix": ("prefix tuning", "P=10, through the MLP (H = n_embd)",
                   lambda c: PrefixTuningConfig(num_virtual_tokens=10, prefix_projection=True)),
        "prompt": ("prompt tuning", "P=10, random init",
                   lambda c: PromptTuningConfig(num_virtual_tokens=10)),
        "pfeiffer": ("Pfeiffer adapter", "bottleneck m = n_embd/16 after the MLP",
                     lambda c: BottleneckConfig(preset="pfeiffer", reduction_factor=16)),
        "houlsby": ("Houlsby adapter", "bottleneck m = n_embd/16 after attention and MLP",
                    lambda c: BottleneckConfig(preset="houlsby", reduction_factor=16)),
    }


METHODS = ("full", "lora", "rslora", "dora", "ia3", "prefix", "prompt", "pfeiffer", "houlsby")


@refuse_unknown_fields
@dataclass
class CompareConfig:
    """One budget for every method."""
    steps: int = 250                # 250 × 8 = one epoch of the 2000 training examples
    batch_size: int = 8
    n_train: int = 2000
    n_eval: int = 50                # the held-out examples the table scores
    n_val: int = 100                # the sweep's validation split
    max_new_tokens: int = 40
    eval_points: int = 10           # eval-loss measurements along the curve (and step 0)
    seed: int = 0
    model: str = BUNDLED

    def __post_init__(self):
        for name in ("steps", "batch_size", "n_train", "n_eval", "n_val", "max_new_tokens",
                     "eval_points", "seed"):
            v, least = getattr(self, name), 0 if name == "seed" else 1
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
                raise ConfigError(f"compare: {name} must be an integer >= {least}, got {v!r}"
                                  + (" (--steps: how many optimizer steps each method trains)."
                                     if name == "steps" else "."))


QUICK = dict(steps=10, batch_size=4, n_train=200, n_eval=8, n_val=8, max_new_tokens=24, eval_points=1)


def check_methods(methods) -> list[str]:
    """The method names, in the table's order; an unknown one is refused by name."""
    if methods is None:
        return list(METHODS)
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    methods = [str(m).strip().lower() for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"compare: unknown method(s) {unknown or methods!r}; choose from "
                          f"{', '.join(METHODS)} (comma-separated, e.g. --methods lora,ia3).")
    return [m for m in METHODS if m in methods]


def load_learning_rates(path: Path = SWEEP_FILE) -> dict[str, float]:
    """method -> learning rate, the best of the sweep (benchmarks/compare_lr_sweep.json)."""
    if not Path(path).is_file():
        raise ConfigError(f"compare: the learning-rate sweep's results {path} are missing; run "
                          "`python benchmarks/compare_lr_sweep.py` to make them, or pass "
                          "learning_rates={method: lr}.")
    data = read_json(path)
    return {m: float(v["best_lr"]) for m, v in data["methods"].items()}


# ====================================================================== data
def task_data(cfg: CompareConfig, tok, n_positions: int):
    """(train encoded, eval examples, eval batches, validation examples, validation batches).

    Three splits of the task's grammar, from three seeds: training (seed), the held-out
    examples the table scores (seed + 1_000_003, as the demo), and the sweep's validation
    split (seed + 2_000_003) with any prompt that is also held out removed."""
    eos = tok.token_to_id("<|endoftext|>")
    train = make_examples(cfg.n_train, seed=cfg.seed)
    held_out = make_examples(cfg.n_eval, seed=cfg.seed + 1_000_003)
    seen = {e["prompt"] for e in held_out}
    val = [e for e in make_examples(cfg.n_val + cfg.n_eval, seed=cfg.seed + VAL_SEED_OFFSET)
           if e["prompt"] not in seen][:cfg.n_val]

    def enc(ex):
        return encode_examples(one_line(ex), tok, n_positions, eos)

    return (enc(train), held_out, batches(enc(held_out), 16, cfg.seed, 0), val,
            batches(enc(val), 16, cfg.seed, 0))


# ====================================================================== one method
def _fresh_model(cfg, method):
    model = GPT2.from_pretrained(cfg.model)
    config = method_configs()[method][2](model.config)
    if config is None:
        return model                                     # full fine-tuning: every parameter trains
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config, seed=cfg.seed)


def _trainer(model, cfg, lr, train_enc):
    args = TrainingArguments(learning_rate=lr, max_steps=cfg.steps, warmup_steps=max(1, cfg.steps // 20),
                             lr_scheduler_type="linear", max_grad_norm=1.0, weight_decay=0.0,
                             seed=cfg.seed)
    return Trainer(model, args, example_batches(train_enc, cfg.batch_size, cfg.seed), progress=False)


def train_method(method: str, lr: float, cfg: CompareConfig, train_enc, eval_batches,
                 bar=None, overall=None, measure_memory: bool = True) -> tuple:
    """Train ``method`` for cfg.steps at ``lr``: -> (model, info) with info = {trainable_params,
    total_params, optimizer_state_bytes, peak_memory_mib, seconds_per_step, train_loss,
    eval_loss, eval_curve [[step, loss], ...], losses}."""
    if measure_memory:                                   # Numba loads (or compiles) its kernels
        _trainer(_fresh_model(cfg, method), cfg, lr, train_enc).training_step()   # untraced
    tracing = measure_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    base_traced = tracemalloc.get_traced_memory()[0] if measure_memory else 0
    peak = first = None
    try:
        model = _fresh_model(cfg, method)                # traced from here: weights, adapter,
        trainer = _trainer(model, cfg, lr, train_enc)    # AdamW's moments (made here), ...
        params = trainer.params
        every = max(1, cfg.steps // cfg.eval_points)
        curve = [[0, evaluate(model, eval_batches)["eval_loss"]]]
        losses, timed, timed_steps = [], 0.0, 0
        for step in range(1, cfg.steps + 1):
            if measure_memory and step == 1:
                gc.collect()
                tracemalloc.reset_peak()                 # ... and the first step's gradients, activations
            t0 = time.perf_counter()
            log = trainer.training_step()
            dt = time.perf_counter() - t0
            if measure_memory and step == 1:
                peak, first = tracemalloc.get_traced_memory()[1] - base_traced, dt
                if tracing:
                    tracemalloc.stop()
                    tracing = False
            else:
                timed, timed_steps = timed + dt, timed_steps + 1
            losses.append(log["loss"])
            if step % every == 0 or step == cfg.steps:
                curve.append([step, evaluate(model, eval_batches)["eval_loss"]])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{log['loss']:.3f}", eval_loss=f"{curve[-1][1]:.3f}")
            if overall is not None:
                overall.update(1)
    finally:
        if tracing:
            tracemalloc.stop()
    if hasattr(model, "eval"):
        model.eval()
    opt = trainer.optimizer
    tail = losses[-max(1, len(losses) // 10):]
    n_train = sum(p.size for p in params.values())
    return model, {
        "trainable_params": int(n_train),
        "total_params": int(model.num_parameters()),
        "optimizer_state_bytes": int(sum(a.nbytes for d in (opt.exp_avg, opt.exp_avg_sq)
                                         for a in d.values())),
        "peak_memory_mib": None if peak is None else peak / 2**20,
        "seconds_per_step": (timed / timed_steps) if timed_steps else first,   # 1 step: the traced one
        "train_loss": float(np.mean(tail)),
        "eval_loss": curve[-1][1],
        "eval_curve": curve,
    }


def greedy_scores(model, tok, examples, max_new_tokens) -> dict:
    """Exact match and slot error of greedy completions (the demo's decoding)."""
    if hasattr(model, "eval"):
        model.eval()
    preds = greedy_completions(model, tok, [e["prompt"] for e in examples], max_new_tokens,
                               tok.token_to_id("<|endoftext|>"))
    return score(preds, examples)


def _disk_bytes(folder: Path) -> int:
    """Bytes of the files a save wrote (links followed, minipeft's hidden entries skipped)."""
    total = 0
    for p in Path(folder).iterdir():
        if p.name.startswith("."):
            continue
        total += _disk_bytes(p) if p.is_dir() else os.path.getsize(p)
    return total


# ====================================================================== the run
def _check_out(out, overwrite: bool) -> Path:
    out = Path(out) if out is not None else Path(f"minipeft-compare-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_folder(out, "--out")                  # a file there: a sentence before any training
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; give another --out or pass --overwrite "
                         "(which replaces it whole when the run ends).")
    return out


def run(methods=None, steps: int | None = None, seed: int = 0, out=None, quick: bool = False,
        overwrite: bool = False, progress: bool = True, learning_rates: dict | None = None,
        config: CompareConfig | None = None, verbose: bool = True) -> list[dict]:
    """Train each method with one budget and write the table, the figure and the adapters.

    methods: names of ``METHODS`` (default all), a list or "a,b". steps: optimizer steps
    per method (default 250; ``quick``: 10 on a smaller set-up, seconds per method).
    learning_rates: {method: lr} to override the sweep's. -> the rows (the base model first),
    as written to ``out/results.json``."""
    names = check_methods(methods)
    cfg = config or CompareConfig()
    if quick:
        cfg = replace(cfg, **QUICK)
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ConfigError(f"compare: steps must be an integer >= 1, got {steps!r} (--steps: "
                              "how many optimizer steps each method trains).")
        cfg = replace(cfg, steps=int(steps))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"compare: seed must be an integer >= 0, got {seed!r}.")
    cfg = replace(cfg, seed=int(seed))
    overrides = dict(learning_rates or {})
    for m, lr in overrides.items():
        check_methods([m])
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise ConfigError(f"compare: the learning rate of {m} must be a number > 0, got {lr!r}.")
    lrs = {} if all(n in overrides for n in names) else load_learning_rates()
    lrs.update({m: float(lr) for m, lr in overrides.items()})
    missing = [n for n in names if n not in lrs]
    if missing:
        raise ConfigError(f"compare: no learning rate for {missing}: the sweep's results do not "
                          "have them; run `python benchmarks/compare_lr_sweep.py` again, or pass "
                          "learning_rates={method: lr}.")
    out = _check_out(out, overwrite)

    start = time.perf_counter()
    tok = load_tokenizer(cfg.model)
    base = GPT2.from_pretrained(cfg.model)
    train_enc, held_out, eval_batches, _, _ = task_data(cfg, tok, base.config.n_positions)
    say = print if verbose else (lambda *a, **k: None)
    say(f"minipeft compare: {len(names)} methods on the restaurant task, each {cfg.steps} steps of "
        f"{cfg.batch_size} examples (seed {cfg.seed}) from the bundled {cfg.model!r} "
        f"({base.num_parameters():,} parameters); scored on {len(held_out)} held-out examples.")
    base_scores = greedy_scores(base, tok, held_out, cfg.max_new_tokens)
    total = base.num_parameters()
    rows = [{"method": "base", "label": "base model (no training)", "config": "", "learning_rate": None,
             "trainable_params": 0, "trainable_percent": 0.0, "optimizer_state_bytes": 0,
             "peak_memory_mib": None, "seconds_per_step": None, "train_loss": None,
             "eval_loss": evaluate(base, eval_batches)["eval_loss"],
             "exact_match": base_scores["exact_match"], "slot_error": base_scores["slot_error"],
             "adapter_bytes": None, "steps": 0}]
    del base
    bars = _bars(progress, len(names) * cfg.steps)
    with atomic_folder(out) as tmp:
        try:
            for name in names:
                label, what, _ = method_configs()[name]
                bar = bars[1](name, cfg.steps)
                try:
                    model, info = train_method(name, lrs[name], cfg, train_enc, eval_batches,
                                               bar=bar, overall=bars[0])
                finally:
                    if bar is not None:
                        bar.close()
                scores = greedy_scores(model, tok, held_out, cfg.max_new_tokens)
                folder = tmp / "adapters" / name
                model.save_pretrained(folder)
                row = {"method": name, "label": label, "config": what, "learning_rate": lrs[name],
                       "trainable_params": info["trainable_params"],
                       "trainable_percent": 100.0 * info["trainable_params"] / info["total_params"],
                       "optimizer_state_bytes": info["optimizer_state_bytes"],
                       "peak_memory_mib": info["peak_memory_mib"],
                       "seconds_per_step": info["seconds_per_step"],
                       "train_loss": info["train_loss"], "eval_loss": info["eval_loss"],
                       "exact_match": scores["exact_match"], "slot_error": scores["slot_error"],
                       "adapter_bytes": _disk_bytes(folder), "steps": cfg.steps,
                       "eval_curve": info["eval_curve"]}
                rows.append(row)
                _write(bars, f"  {label:18s} eval loss {row['eval_loss']:.3f}, exact match "
                             f"{row['exact_match']:.0%}, slot error {row['slot_error']:.0%}", say)
                del model
                gc.collect()
        finally:
            if bars[0] is not None:
                bars[0].close()
        seconds = time.perf_counter() - start
        meta = {"config": asdict(cfg), "methods": names, "seconds": round(seconds, 1),
                "total_params": total, "learning_rates": {m: lrs[m] for m in names},
                "peak_memory": "tracemalloc peak of the first training step (weights, adapter, "
                               "gradients, AdamW state, activations)"}
        (tmp / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        (tmp / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / "results.csv").write_text(to_csv(rows))
        save_figure(plot_compare(rows), tmp / "compare.png", dpi=110)
    say("")
    say(format_table(rows))
    say(f"\nSaved to {out}/: results.json, results.csv, compare.png, adapters/<method>/ (peft's "
        f"format; full: a GPT-2 folder). Took {seconds:.0f} s.")
    return rows


def _bars(progress: bool, total: int):
    """(overall bar or None, a maker of one bar per method)."""
    if not progress:
        return None, lambda name, n: None
    overall = tqdm(total=total, desc="all methods", unit="step", position=0)
    return overall, lambda name, n: tqdm(total=n, desc=f"{name:>8s}", unit="step", position=1,
                                         leave=False)


def _write(bars, text, say):
    if bars[0] is not None:
        bars[0].write(text)
    else:
        say(text)


# ====================================================================== the table and the figure
CSV_COLUMNS = ("method", "label", "config", "learning_rate", "trainable_params", "trainable_percent",
               "optimizer_state_bytes", "peak_memory_mib", "seconds_per_step", "train_loss",
               "eval_loss", "exact_match", "slot_error", "adapter_bytes", "steps")


def to_csv(rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def _size(n):
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def format_table(rows) -> str:
    """The table as printed (and pasted into the README)."""
    head = ("method", "trainable", "%", "AdamW state", "peak MiB", "s/step", "train loss",
            "eval loss", "exact", "slot err", "on disk")
    lines = []

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    for r in rows:
        lines.append((r["label"] if r["method"] != "base" else "base model", f"{r['trainable_params']:,}",
                      f(r["trainable_percent"], ".2f"), _size(r["optimizer_state_bytes"] or None),
                      f(r["peak_memory_mib"], ".1f"), f(r["seconds_per_step"], ".3f"),
                      f(r["train_loss"], ".3f"), f(r["eval_loss"], ".3f"),
                      f"{r['exact_match']:.0%}", f"{r['slot_error']:.0%}", _size(r["adapter_bytes"])))
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]

    def fmt(cells):
        return " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(head), "-+-".join("-" * w for w in widths)] + [fmt(l) for l in lines])


def plot_compare(rows):
    """Eval-loss curves of every method; exact match and slot error against trainable
    parameters (log scale). -> a matplotlib Figure on its own Agg canvas."""
    fig = _new_figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    base = next((r for r in rows if r["method"] == "base"), None)
    trained = [r for r in rows if r["method"] != "base"]
    for k, r in enumerate(trained):
        steps, losses = zip(*r["eval_curve"])
        ax1.plot(steps, losses, "o-", ms=3, color=f"C{k % 10}", label=r["label"])
    if base is not None:
        ax1.axhline(base["eval_loss"], color="gray", ls="--", lw=1, label="base model")
    ax1.set_yscale("log")
    ax1.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax1.yaxis.set_major_formatter(ScalarFormatter())
    ax1.yaxis.set_minor_formatter(NullFormatter())
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("eval loss (nats / token, held-out)")
    ax1.set_title("Eval loss, one budget")
    ax1.legend(fontsize=7)
    for k, r in enumerate(trained):
        x = max(r["trainable_params"], 1)
        ax2.scatter(x, 100 * r["exact_match"], color=f"C{k % 10}", marker="o", s=40)
        ax2.scatter(x, 100 * r["slot_error"], color=f"C{k % 10}", marker="x", s=40)
        ax2.annotate(r["label"], (x, 100 * r["exact_match"]), xytext=(4, 4 + 9 * (k % 4)),
                     textcoords="offset points", fontsize=7)
    if base is not None:
        ax2.axhline(100 * base["exact_match"], color="gray", ls="--", lw=1)
        ax2.axhline(100 * base["slot_error"], color="gray", ls=":", lw=1)
    ax2.scatter([], [], color="k", marker="o", label="exact match")
    ax2.scatter([], [], color="k", marker="x", label="slot error")
    ax2.plot([], [], color="gray", ls="--", label="base model")
    ax2.set_xscale("log")
    ax2.set_xlabel("trainable parameters")
    ax2.set_ylabel("% of the held-out examples / slots")
    ax2.set_ylim(-3, 103)
    ax2.set_title("Quality against trainable parameters")
    ax2.legend(fontsize=7, loc="center right")
    return fig


# ====================================================================== the command
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    p.add_argument("--steps", type=int, help=f"optimizer steps per method (default "
                   f"{CompareConfig.steps}; --quick: {QUICK['steps']})")
    p.add_argument("--seed", type=int, default=0, help="data order and adapter init (default 0)")
    p.add_argument("--out", help="output folder (default: minipeft-compare-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out when done")
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, few examples")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args) -> None:
    """``minipeft compare``: run() with the command's flags."""
    if args.steps is not None and args.steps < 1:
        raise MinipeftError(f"--steps must be >= 1, got {args.steps}.")
    if args.seed < 0:
        raise MinipeftError(f"--seed must be >= 0, got {args.seed}.")
    run(methods=args.methods, steps=args.steps, seed=args.seed, out=args.out, quick=args.quick,
        overwrite=args.overwrite, progress=not args.no_progress)
