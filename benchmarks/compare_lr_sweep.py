"""The learning-rate sweep behind ``minipeft compare``: one learning rate per method.

    python benchmarks/compare_lr_sweep.py                 # all methods, writes compare_lr_sweep.json
    python benchmarks/compare_lr_sweep.py --methods ia3   # some of them (merged into the file)
    python benchmarks/compare_lr_sweep.py --further       # one more step where an edge still wins

Each method trains with the compare run's budget (``CompareConfig``: the batch, data,
seed and schedule of ``minipeft compare``) but shorter, 100 steps instead of 250 (the
sweep is 3-4 runs per method on a shared 2-core machine; the learning rate that wins a
short run may be a little high for the longer one), at each learning rate of its grid:
three values of a 1-3-10 ladder around what is usual for the method. When the best is at
an end of the grid, the grid grows by one more step of the ladder on that side (once).
The best is the lowest loss on a validation split of 100 examples (seed + 2_000_003, prompts of the 50
held-out examples removed), never the held-out examples that ``compare`` scores. The
sweep keeps the whole grid's losses, so the choice can be read and checked.

A run that diverges (NaN loss) counts as +inf. Timing: 3-4 runs per method, each 40 % of
one method of ``minipeft compare``; single-threaded processes (``--threads 1``, the
default) and two of them on two cores with disjoint ``--methods``, both merging into the
same file.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

GRIDS = {                       # the middle of each grid is the value usual for the method
    "full": (3e-4, 1e-3, 3e-3),
    "lora": (3e-3, 1e-2, 3e-2),
    "rslora": (1e-3, 3e-3, 1e-2),   # s = alpha/sqrt(r) = 2.8x LoRA's s at r = 8
    "dora": (3e-3, 1e-2, 3e-2),
    "ia3": (1e-2, 3e-2, 1e-1),
    "prefix": (1e-3, 3e-3, 1e-2),
    "prompt": (1e-2, 3e-2, 1e-1),
    "pfeiffer": (1e-3, 3e-3, 1e-2),
    "houlsby": (1e-3, 3e-3, 1e-2),
}
OUT = Path(__file__).resolve().parent / "compare_lr_sweep.json"


def ladder(lr: float, up: bool) -> float:
    """The next value on the 1-3-10 ladder of the grids: 3e-3 -> 1e-2 (up), 1e-3 -> 3e-4 (down)."""
    e = math.floor(math.log10(lr) + 1e-9)
    m = round(lr / 10 ** e)                              # 1 or 3
    if up:
        return float(f"{3 if m == 1 else 1}e{e if m == 1 else e + 1}")
    return float(f"{1 if m == 3 else 3}e{e if m == 3 else e - 1}")


def val_loss(method, lr, cfg, train_enc, val_batches) -> float:
    from minipeft.compare import train_method
    from minipeft.train.trainer import TrainingError
    try:
        _, info = train_method(method, lr, cfg, train_enc, val_batches, measure_memory=False)
    except TrainingError:                       # diverged
        return math.inf
    return info["eval_loss"] if math.isfinite(info["eval_loss"]) else math.inf


def sweep(methods, cfg, previous=None) -> dict:
    """{method: {best_lr, val_loss {lr: loss}, at_edge, seconds}}. With ``previous`` (the
    file's results, for --further) a method's earlier losses are kept and only one more
    ladder step past a winning edge is run."""
    from minipeft import GPT2, load_tokenizer
    from minipeft.compare import task_data
    tok = load_tokenizer(cfg.model)
    n_positions = GPT2.from_pretrained(cfg.model).config.n_positions
    train_enc, _, _, val, val_batches = task_data(cfg, tok, n_positions)
    results = {}
    for m in methods:
        t0 = time.perf_counter()
        old = (previous or {}).get(m)
        if old:
            losses = {float(k): v for k, v in old["val_loss"].items()}
        else:
            losses = {}
            for lr in GRIDS[m]:
                losses[lr] = val_loss(m, lr, cfg, train_enc, val_batches)
                print(f"{m:9s} lr {lr:.0e}: val loss {losses[lr]:.4f}", flush=True)
        lrs, best = sorted(losses), min(losses, key=losses.get)
        for edge, up in ((lrs[0], False), (lrs[-1], True)):        # one step past a winning edge
            if best == edge:
                lr = ladder(edge, up)
                losses[lr] = val_loss(m, lr, cfg, train_enc, val_batches)
                print(f"{m:9s} lr {lr:.0e}: val loss {losses[lr]:.4f} (past the edge)", flush=True)
        best = min(losses, key=losses.get)
        lrs = sorted(losses)
        results[m] = {"best_lr": best, "val_loss": {f"{lr:g}": losses[lr] for lr in lrs},
                      "at_edge": best in (lrs[0], lrs[-1]),
                      "seconds": round(time.perf_counter() - t0 + (old["seconds"] if old else 0), 1)}
        print(f"{m:9s} best lr {best:g}", flush=True)
    return {"validation_examples": len(val), **results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", help="comma-separated method names (default all)")
    p.add_argument("--out", default=str(OUT), help="the results file; methods already there are "
                   "kept unless swept again")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run (default 100, "
                   "40 %% of compare's 250: short runs keep the sweep cheap)")
    p.add_argument("--further", action="store_true", help="for methods already in --out whose "
                   "best is at an end of their grid: keep their losses, run one more ladder step "
                   "past that end")
    p.add_argument("--threads", type=int, default=1, help="BLAS and Numba threads per process "
                   "(default 1: at these sizes more threads only contend; run two processes "
                   "with disjoint --methods on two cores)")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)              # before numpy is imported
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from minipeft.compare import CompareConfig, check_methods
    methods = check_methods(args.methods)
    cfg = CompareConfig()
    start = time.perf_counter()
    cfg = replace(cfg, steps=args.steps)                 # everything else as compare's budget
    sweep_cfg = replace(cfg, eval_points=1)              # the loss at the end is what counts
    previous = None
    if args.further:
        previous = json.loads(Path(args.out).read_text())["methods"]
        methods = [m for m in methods if previous.get(m, {}).get("at_edge")]
    found = sweep(methods, sweep_cfg, previous)
    out = Path(args.out)
    with _locked(out):                                   # two processes may finish together
        _merge(out, methods, found, cfg, start, further=previous is not None)
    print(f"wrote {out}")
    return 0


@contextlib.contextmanager
def _locked(out: Path):
    import fcntl
    import tempfile
    with open(Path(tempfile.gettempdir()) / "minipeft-compare-lr-sweep.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _merge(out, methods, found, cfg, start, further=False):
    from minipeft.compare import METHODS
    data = json.loads(out.read_text()) if out.is_file() else {"methods": {}}
    data["methods"].update({m: found[m] for m in methods})
    data["methods"] = {m: data["methods"][m] for m in METHODS if m in data["methods"]}
    data.update({
        "how": "python benchmarks/compare_lr_sweep.py: each method at each learning rate of its "
               "grid with CompareConfig's budget; best = lowest loss on the validation split "
               "(seed + 2000003, held-out prompts removed); a grid grows one step of its 1-3-10 "
               "ladder past an edge that wins.",
        "budget": {k: v for k, v in vars(cfg).items() if k not in ("n_eval", "max_new_tokens",
                                                                   "eval_points")},
        "validation_examples": found["validation_examples"],
    })
    data.setdefault("runs", []).append({"methods": methods, "further": further,
                                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                        "seconds": round(time.perf_counter() - start, 1)})
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    sys.exit(main())
