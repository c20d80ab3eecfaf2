"""Peak memory of the training step, each side in a child process of its own.

The child sets up (model, adapter, optimiser, one warm-up step), resets the peak (``5``
into /proc/self/clear_refs), runs the steps and reads VmHWM; reported: VmHWM − VmRSS
after set-up, the extra MiB the step needs. Without /proc, getrusage's ru_maxrss (no
reset: a lower bound, marked ``~``).

Both children run with glibc's mmap threshold fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_,
read by glibc alone; other C libraries ignore it). By default glibc raises the threshold
after the first large free, up to 32 MiB, and then keeps freed blocks below it in its heap:
the RSS after set-up then holds whatever the warm-up step left there, a different amount in
each run (the same minipeft step read 101 MiB and 358 MiB over set-up in two runs, torch
312 to 323). Fixed, every array of 128 KiB or more goes back to the system when freed, the
set-up RSS is the live memory, and peak − set-up is what the step itself adds (stable to
0.1 MiB from run to run).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys

from .config import BenchConfig
from .models import batch_ids, build_hf, minipeft_lora, minipeft_random, torch_lora
from .timing import minipeft_step, torch_step

MMAP_THRESHOLD = 128 * 1024      # bytes: glibc's own starting value, kept fixed (see above)


def _status_mib(key: str):
    """VmRSS / VmHWM of this process from /proc/self/status, MiB (None without /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024          # kB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_mib() -> float:
    import resource  # POSIX only: imported where it is needed
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024    # bytes on macOS, KiB on Linux


def memory_child(side: str, cfg: BenchConfig) -> dict:
    """In a child process: set up one side, warm up, reset the peak, run steps, read the peak."""
    ids, _ = batch_ids(cfg)
    if side == "minipeft":                  # no torch in this process, as a minipeft user
        pm, opt = minipeft_lora(minipeft_random(cfg), cfg)
        step = minipeft_step(pm, opt, ids)
    else:
        pm_t, opt = torch_lora(build_hf(cfg), cfg)
        step = torch_step(pm_t, opt, ids)
    step()                                  # warm-up: Numba compiles, optimiser state exists
    gc.collect()
    exact = _reset_peak() and _status_mib("VmHWM") is not None
    before = _status_mib("VmRSS") if exact else _maxrss_mib()
    for _ in range(max(1, min(cfg.reps, 3))):
        step()
    after = _status_mib("VmHWM") if exact else _maxrss_mib()
    return {"setup_mib": before, "peak_mib": after, "extra_mib": max(0.0, after - before),
            "how": "VmHWM" if exact else "ru_maxrss"}


def measure_memory(side: str, cfg: BenchConfig) -> dict:
    """Run memory_child in a fresh interpreter (python -m minipeft.bench --_memory-child SIDE)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    cmd = [sys.executable, "-m", "minipeft.bench", "--_memory-child", side,
           "--_child-config", json.dumps(dataclasses.asdict(cfg))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"the {side} child failed (exit {proc.returncode}): " + " | ".join(tail)}
    return json.loads(lines[-1])
