"""The ceiling: NumPy's own matmul on the step's shapes, and the LoRA step's FLOPs.

The peak is the FLOP-weighted rate of the step's big products (N = batch × seq):
(N, C)@(C, 3C), (N, C)@(C, 4C), (N, 4C)@(4C, C), (N, C)@(C, V), (N, V)@(V, C) — all
their FLOPs over all their time, each shape's best time. Each side's share of it: the
LoRA step's FLOPs (below) / step time / peak.

FLOPs of the LoRA training step (a multiply-add = 2 FLOPs), N = B·T tokens, L layers,
C = n_embd, V = vocab, T = seq, r = rank, for each LoRA target (in, out):

    forward    L · 2N·12C²           c_attn 3C², attn.c_proj C², mlp.c_fc 4C², mlp.c_proj 4C²
             + L · 4N·T·C            q kᵀ and p v over the full T × T scores
             + 2N·C·V                lm_head
             + Σ 2N·r·(in + out)     x Aᵀ, u Bᵀ
    backward   L · 2N·12C²           input gradients only: the base weights are frozen
             + L · 8N·T·C            dv, dp, dq, dk
             + 2N·C·V                dxf = dlogits @ wte (wte frozen: no dwte)
             + Σ 4N·r·(in + out)     dB, du, dA, dx
    total      L·(48N·C² + 12N·T·C) + 4N·C·V + Σ 6N·r·(in + out)

At the default shape that is ≈ 2.6e11 FLOPs per step (c_attn: in + out = 4C per layer).
"""
from __future__ import annotations

import numpy as np

from .config import BenchConfig
from .timing import time_alternating


def matmul_shapes(cfg: BenchConfig):
    """(M, K, N) of the step's big products: c_attn, mlp.c_fc, mlp.c_proj, lm_head, its dx."""
    N, C, V = cfg.tokens, cfg.n_embd, cfg.vocab_size
    return [(N, C, 3 * C), (N, C, 4 * C), (N, 4 * C, C), (N, C, V), (N, V, C)]


def matmul_rates(cfg: BenchConfig) -> list[dict]:
    """numpy's GFLOP/s on each shape: the best of max(5, reps) products, shapes in turn.
    The best, not the median: the peak is what numpy reaches when nothing disturbs it."""
    rng = np.random.default_rng(cfg.seed)
    products = {}
    for M, K, N in matmul_shapes(cfg):
        a = rng.standard_normal((M, K)).astype(cfg.dtype)
        b = rng.standard_normal((K, N)).astype(cfg.dtype)
        products[(M, K, N)] = lambda a=a, b=b: a @ b
    times = time_alternating(products, max(5, cfg.reps), 1)
    rows = []
    for (M, K, N), ts in times.items():
        flops, t = 2.0 * M * K * N, min(ts)
        rows.append({"shape": (M, K, N), "flops": flops, "seconds": t, "gflops": flops / t / 1e9})
    return rows


def matmul_peak(rows: list[dict]) -> float:
    """The FLOP-weighted rate of the shapes, GFLOP/s: all their FLOPs over all their time."""
    return sum(r["flops"] for r in rows) / sum(r["seconds"] for r in rows) / 1e9


def lora_targets(cfg: BenchConfig) -> list[tuple[int, int]]:
    """(in, out) of every LoRA-wrapped layer (all layers × the targeted modules)."""
    C = cfg.n_embd
    shapes = {"c_attn": [(C, 3 * C)], "attn.c_proj": [(C, C)], "c_proj": [(C, C), (4 * C, C)],
              "mlp.c_fc": [(C, 4 * C)], "mlp.c_proj": [(4 * C, C)]}
    per_layer = [s for t in cfg.target_modules for s in shapes.get(t, [])]
    return per_layer * cfg.n_layer


def lora_step_flops(cfg: BenchConfig) -> float:
    """FLOPs of one LoRA training step, counted as in the module docstring."""
    N, T, C, V, L = cfg.tokens, cfg.seq, cfg.n_embd, cfg.vocab_size, cfg.n_layer
    lora = sum(6.0 * N * cfg.r * (i + o) for i, o in lora_targets(cfg))
    return L * (48.0 * N * C * C + 12.0 * N * T * C) + 4.0 * N * C * V + lora
