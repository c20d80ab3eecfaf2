"""The BLAS itself: NumPy's products against torch's on a LoRA step's shapes, and what a
NumPy caller can change (the layout of an operand, the thread count).

    python benchmarks/blas_shapes.py [--reps 15]

For each big product of the GPT-2 124M training step (N = 4 × 128 rows, float32), in the
layout the step uses: NumPy's `a @ b`, torch's `torch.matmul` on the same arrays (its
oneDNN/MKL-free CPU build here: torch's own GEMM dispatch), NumPy with the second operand
stored transposed (`a @ bt.T`, bt contiguous), and NumPy with OpenBLAS on one thread.
Calls alternate, best and median of --reps reported, GFLOP/s. The machine line says
which CPU, which OpenBLAS kernel and how many threads (bench/machine.py).
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import numpy as np

from minipeft.bench.machine import machine_info, openblas_function, openblas_runtime

SHAPES = [  # (name, M, K, N): a (M, K) @ b (K, N)
    ("c_attn x W", 512, 768, 2304),
    ("mlp.c_fc x W", 512, 768, 3072),
    ("mlp.c_proj x W", 512, 3072, 768),
    ("c_attn dout Wᵀ", 512, 2304, 768),
    ("lm_head xf wteᵀ", 512, 768, 50257),
    ("lm_head dlogits wte", 512, 50257, 768),
]


def openblas_threads(n: int) -> None:
    """Set OpenBLAS's thread count through its own symbol (no threadpoolctl needed)."""
    set_threads = openblas_function("set_num_threads", None)
    if set_threads is not None:
        set_threads(ctypes.c_int(n))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    import torch  # optional: the reference side
    rng = np.random.default_rng(0)
    threads = openblas_runtime().get("threads", 2)
    print(f"{'product':22s} {'(M, K, N)':>18s}  numpy  torch  numpy b-transposed  numpy 1 thread"
          "   (GFLOP/s, best of reps / median)")
    for name, M, K, N in SHAPES:
        a = rng.standard_normal((M, K), dtype=np.float32)
        b = rng.standard_normal((K, N), dtype=np.float32)
        bt = np.ascontiguousarray(b.T)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        calls = {"numpy": lambda: a @ b, "torch": lambda: torch.matmul(ta, tb),
                 "numpy b-transposed": lambda: a @ bt.T, "numpy 1 thread": lambda: a @ b}
        times = {k: [] for k in calls}
        for fn in calls.values():
            fn()
        for _ in range(args.reps):
            for k, fn in calls.items():
                openblas_threads(1 if k == "numpy 1 thread" else threads)
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        openblas_threads(threads)
        flops = 2.0 * M * K * N / 1e9
        cells = [f"{flops / min(ts):5.0f}/{flops / statistics.median(ts):3.0f}" for ts in times.values()]
        print(f"{name:22s} {str((M, K, N)):>18s}  " + "  ".join(cells))
    info = machine_info(True)
    print(f"\nmachine: {info['cpu']} ({info['vendor']}, {info['simd']}), {info['cores']} CPUs; numpy "
          f"{info['numpy']} ({info['blas']}); torch {info['torch']} ({info['torch_threads']} threads, "
          f"{info.get('torch_cpu', '?')})")


if __name__ == "__main__":
    main()
