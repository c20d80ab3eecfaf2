"""The report: the main table (minipeft, torch, ratio, target), then each section's lines."""
from __future__ import annotations

from .config import BenchConfig
from .matmul import lora_step_flops
from .profile import PROFILE_ORDER
from .timing import median

# issue 17's targets; the matmul section adds the step's share of the ceiling (≥ 85 %)
TARGETS = {"train": "≥ 1.1", "masked": "≥ 1.1", "forward": "≥ 1.1", "decode": "≥ 1.3",
           "memory": "≤ 0.9"}
CEILING_TARGET = 85          # % of numpy's matmul peak the LoRA step should reach
METHODS_TARGET = 1.1         # every method's step time / LoRA's


def _fmt(x, digits=1):
    return "—" if x is None or x != x else f"{x:,.{digits}f}"


def main_rows(res: dict, cfg: BenchConfig) -> list[tuple]:
    """(metric, minipeft, torch, ratio, target) for each measured section."""
    rows = []
    per_s = {"train": ("LoRA training step, tokens/s", cfg.tokens),
             "masked": ("  the same, first half of the labels -100, tokens/s", cfg.tokens),
             "forward": ("forward (logits, no grad), tokens/s", cfg.tokens),
             "decode": ("greedy decode, KV cache, batch 1, new tokens/s", cfg.new_tokens)}
    for key, (label, n) in per_s.items():
        if key in res["times"]:
            t = res["times"][key]
            ours = n / median(t["minipeft"])
            theirs = n / median(t["torch"]) if "torch" in t else None
            rows.append((label, _fmt(ours), _fmt(theirs),
                         _fmt(ours / theirs, 2) if theirs else "—", TARGETS[key]))
    if "memory" in res:
        mem = res["memory"]
        vals = {s: (None if "error" in m else m["extra_mib"]) for s, m in mem.items()}
        approx = "~" if any(m.get("how") == "ru_maxrss" for m in mem.values()) else ""
        ours, theirs = vals.get("minipeft"), vals.get("torch")
        ratio = _fmt(ours / theirs, 2) if ours is not None and theirs else "—"
        rows.append(("training step peak memory, MiB over set-up", approx + _fmt(ours),
                     approx + _fmt(theirs), ratio, TARGETS["memory"]))
    return rows


def print_table(header, rows, aligns):
    """A plain-text table; aligns: '<' or '>' per column."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(f"{str(v):{a}{w}}" for v, a, w in zip(r, aligns, widths)).rstrip()
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def print_report(res: dict, cfg: BenchConfig) -> None:
    mach = res["machine"]
    print(f"\nminipeft bench: GPT-2 n_layer={cfg.n_layer} n_head={cfg.n_head} n_embd={cfg.n_embd} "
          f"vocab={cfg.vocab_size}, {cfg.dtype}, batch {cfg.batch} × {cfg.seq} tokens, LoRA "
          f"r={cfg.r} alpha={cfg.lora_alpha:g} on {','.join(cfg.target_modules)}; decode "
          f"{cfg.prompt} + {cfg.new_tokens} tokens; median of {cfg.reps} alternating reps\n")
    rows = main_rows(res, cfg)
    if rows:
        print_table(("metric", "minipeft", "torch(+peft)", "ratio minipeft/torch", "target"),
                    rows, "<>>><")
        if "memory" in res:
            for side, m in res["memory"].items():
                print(f"  memory, {side}: " + (m["error"] if "error" in m else
                      f"{m['extra_mib']:.1f} MiB = peak {m['peak_mib']:.1f} − set-up "
                      f"{m['setup_mib']:.1f} ({m['how']}; set-up = weights, adapter, optimiser, "
                      "one warm-up step)"))
    if "matmul" in res:
        print_matmul(res, cfg)
    if "check" in res:
        c = res["check"]
        same = {True: ", greedy tokens identical", False: ", greedy tokens differ (float ties?)",
                None: ""}[c.get("same_tokens")]
        print(f"\nsame weights: forward logits max|a−b|/max|b| = {c['logits_rel_diff']:.1e}{same}")
    if "profile" in res:
        train = res["times"].get("train", {}).get("minipeft")
        print_profile(res["profile"], median(train) * 1000 if train else None)
    if "methods" in res:
        print_methods(res["methods"])
    print(f"\nmachine: {mach['cpu']} ({mach.get('vendor', '?')}, {mach.get('simd', '?')}), "
          f"{mach['cores']} CPUs; python {mach['python']}, numpy "
          f"{mach['numpy']} ({mach['blas']}), numba {mach['numba']}"
          + (f", torch {mach['torch']} ({mach['torch_threads']} threads"
             + (f", attention {mach['attn_implementation']}" if "attn_implementation" in mach else "")
             + f"), transformers {mach['transformers']}, peft {mach['peft']}"
             if "torch" in mach else "")
          + f"; threads: {mach['threads']}")
    print(f"reproduce: {res['command']}")


def print_matmul(res: dict, cfg: BenchConfig) -> None:
    mm, peak = res["matmul"], res["matmul_peak_gflops"]
    shapes = ", ".join(f"({M},{K})@({K},{N}) {r['gflops']:.0f}" for r in mm
                       for M, K, N in [r["shape"]])
    print(f"\nnumpy {cfg.dtype} matmul, GFLOP/s: {shapes}; peak (FLOP-weighted) {peak:.1f}")
    flops = lora_step_flops(cfg)
    cap = cfg.tokens / (flops / (peak * 1e9))
    print(f"LoRA step: {flops / 1e9:.3g} GFLOP (counted, see bench/matmul.py); at the peak "
          f"a step would run {cap:,.1f} tokens/s")
    if "train" in res["times"]:
        for side, t in res["times"]["train"].items():
            rate = flops / median(t) / 1e9
            print(f"  {side}: {rate:.1f} GFLOP/s = {100 * rate / peak:.0f}% of the peak"
                  + (f" (target ≥ {CEILING_TARGET}%)" if side == "minipeft" else ""))
    if "masked" in res["times"]:                 # the dense step's FLOPs over the masked step's time
        print("  first half of the labels -100, the dense step's FLOPs over each side's time "
              "(above 100%: past the ceiling, by not computing what the loss ignores):")
        for side, t in res["times"]["masked"].items():
            rate = flops / median(t) / 1e9
            print(f"    {side}: {rate:.1f} GFLOP/s = {100 * rate / peak:.0f}% of the peak")


def print_profile(ms: dict, untimed_ms=None) -> None:
    total = ms["total"]
    plain = f"; {untimed_ms:.1f} ms without them, in the train section" if untimed_ms else ""
    print(f"\nminipeft LoRA training step by op (exclusive time, {total:.1f} ms per step "
          f"with the timers on{plain}):")
    ops = [op for op in PROFILE_ORDER if op in ms] + sorted(set(ms) - set(PROFILE_ORDER) - {"total"})
    rows = [(op, f"{ms[op]:.2f}", f"{100 * ms[op] / total:.1f}%") for op in ops]
    print_table(("op", "ms/step", "% of step"), rows, "<>>")


def print_methods(rows: list[dict]) -> None:
    print(f"\nminipeft training step per PEFT method (target: ≤ {METHODS_TARGET} × LoRA's time):")
    table = []
    for r in rows:
        if r["note"]:
            table.append((r["method"], "—", "—", "—", "—", r["note"]))
        else:
            table.append((r["method"], f"{r['trainable']:,d}", f"{1000 * r['seconds']:.1f}",
                          f"{r['tokens_per_s']:.1f}", f"{r['vs_lora']:.2f}", ""))
    print_table(("method", "trainable", "ms/step", "tokens/s", "time / LoRA's", "note"),
                table, "<>>>><")
