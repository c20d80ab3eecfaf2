"""What the numbers were measured on: the CPU (model, vendor, vector width), the cores,
the library versions, and the BLAS as it runs — its build and the kernel it picked for
this CPU (OpenBLAS chooses one at load time: on an AMD EPYC with AVX-512 it may run its
SkylakeX kernels), and its threads. Machines differ (benchmarks/README.md has the runs
side by side), so every report carries these lines."""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform

import numpy as np

from .models import require_torch


def cpu_info() -> dict:
    """{'cpu': model name, 'vendor': GenuineIntel/AuthenticAMD/..., 'simd': widest vector
    set} from /proc/cpuinfo, else what platform knows."""
    info = {"cpu": platform.processor() or platform.machine(), "vendor": "?", "simd": "?"}
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                          if ":" in line)
    except OSError:
        return info
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    info["cpu"] = fields.get("model name", info["cpu"])
    info["vendor"] = fields.get("vendor_id", "?")
    info["simd"] = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"),
                                                 ("avx", "AVX"), ("sse4_2", "SSE4.2"))
                         if flag in flags), "?")
    return info


def openblas_function(name: str, restype=ctypes.c_int):
    """OpenBLAS's C function ``name`` (get_corename, set_num_threads, ...) in the OpenBLAS
    this process loaded (numpy's), under any of its builds' symbol names
    (scipy_openblas_<name>64_, openblas_<name>, ...); None without one."""
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f
                           if "openblas" in line.split()[-1].rsplit("/", 1)[-1].lower()})
    except OSError:
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""),
                               ("openblas_", "64_"), ("openblas_", "")):
            fn = getattr(lib, f"{prefix}{name}{suffix}", None)
            if fn is not None:
                fn.restype = restype
                return fn
    return None


def openblas_runtime() -> dict:
    """The OpenBLAS that this process loaded (numpy's): its config string, the kernel it
    picked for this CPU (corename) and its thread count; {} for another BLAS."""
    fns = [openblas_function(name, restype) for name, restype in
           (("get_corename", ctypes.c_char_p), ("get_config", ctypes.c_char_p),
            ("get_num_threads", ctypes.c_int))]
    if None in fns:
        return {}
    core, config, threads = fns
    return {"core": core().decode(), "config": config().decode(), "threads": threads()}


def machine_info(with_torch: bool) -> dict:
    """CPU model, vendor, vector width, cores, library versions, BLAS build and kernel."""
    info = cpu_info()
    info.update(cores=os.cpu_count(), python=platform.python_version(), numpy=np.__version__,
                blas="?", numba=importlib.metadata.version("numba"))    # without importing numba
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:                                    # older numpy: no mode="dicts"
        pass
    rt = openblas_runtime()
    if rt:
        info["blas"] += f", {rt['core']} kernels, {rt['threads']} threads"
    threads = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
                                                "NUMBA_THREADING_LAYER") if k in os.environ]
    info["threads"] = ", ".join(threads) or "library defaults"
    if with_torch:
        torch, transformers, peft = require_torch()
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    transformers=transformers.__version__, peft=peft.__version__)
        try:
            info["torch_cpu"] = torch.backends.cpu.get_cpu_capability()
        except Exception:                                # older torch
            pass
    return info
