"""``minipeft bench``: minipeft against torch + peft on a CPU, measured in one run.

    python -m minipeft.bench                 # GPT-2 124M shape, a few minutes
    python -m minipeft.bench --quick         # a tiny shape, seconds (a smoke run)
    python -m minipeft.bench --no-torch      # minipeft alone (torch not installed)

The default case: GPT-2 124M shape (12 layers, 12 heads, n_embd 768, vocab 50257),
float32, batch 4 × 128 tokens, LoRA r=8, lora_alpha=16 on c_attn, dropout 0. Both
sides get the same random weights: a ``transformers`` GPT2LMHeadModel built with a
seed, whose state dict (as NumPy arrays) makes minipeft's GPT2.

Sections (``--only`` picks some):

    train    LoRA training step, tokens/s: minipeft ``loss_and_grads`` + its AdamW step,
             against peft: ``model(ids, labels=ids).loss.backward()``, torch's AdamW
             step, ``zero_grad``. Tokens = batch × seq.
    forward  the logits of the batch without gradients, tokens/s (the base GPT-2).
    decode   greedy generation with a KV cache, batch 1, ``--prompt`` tokens then
             ``--new-tokens`` new ones (eos cannot stop it): new tokens/s, prefill included.
    memory   peak memory of the training step, each side in a child process of its
             own: set up (model, adapter, optimiser, one warm-up step), reset the peak
             (``5`` into /proc/self/clear_refs), run the steps, read VmHWM; reported:
             VmHWM − VmRSS after set-up, the extra MiB the step needs. Without /proc,
             getrusage's ru_maxrss (no reset: a lower bound, marked ``~``).
    matmul   numpy's own matmul GFLOP/s on the step's shapes (N = batch × seq):
             (N, C)@(C, 3C), (N, C)@(C, 4C), (N, 4C)@(4C, C), (N, C)@(C, V), (N, V)@(V, C);
             the peak is their FLOP-weighted rate (all FLOPs / all time, each shape's
             best time). Each side's
             share of it: the LoRA step's FLOPs (below) / step time / peak.
    profile  minipeft's training step op by op: ms per step and % of the step.
    methods  the training step of each PEFT method (minipeft only) against LoRA's.

Timing: each side first runs ``--warmup`` times (Numba compiles, caches fill), then
``--reps`` repetitions ALTERNATING minipeft and torch (methods: round-robin), with a
short ``--pause`` between runs so that one library's idle threads have stopped
spinning when the other starts; the median is reported.

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

import argparse
import contextlib
import copy
import dataclasses
import functools
import gc
import importlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .errors import MinipeftError

SECTIONS = ("train", "forward", "decode", "memory", "matmul", "profile", "methods")
TORCH_MISSING = (
    "the torch side of the benchmark needs torch, transformers and peft (the `test` extra). "
    "Install them with torch pinned first, as DEVELOPERS.md says:\n"
    "    pip install torch==2.13.0 && pip install -e \".[test]\"\n"
    "or measure minipeft alone with --no-torch.")


@dataclass
class BenchConfig:
    """What to measure, on which shape. The defaults are GPT-2 124M, batch 4 × 128."""
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    n_positions: int = 1024
    batch: int = 4
    seq: int = 128
    r: int = 8                       # LoRA rank
    lora_alpha: float = 16.0
    target_modules: tuple = ("c_attn",)
    prompt: int = 16                 # decode: prompt tokens
    new_tokens: int = 64             # decode: new tokens
    reps: int = 5                    # alternating repetitions; the median is reported
    warmup: int = 1
    pause: float = 0.2               # seconds between alternating runs
    dtype: str = "float32"
    torch: bool = True               # False: minipeft alone
    sections: tuple = SECTIONS
    seed: int = 0

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


QUICK = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, n_positions=64, batch=2, seq=16,
             prompt=4, new_tokens=8, reps=2, pause=0.0)


# ==================================================================== models
def require_torch():
    """-> (torch, transformers, peft), or a MinipeftError saying how to install them."""
    try:
        import peft
        import torch
        import transformers
    except ImportError as e:
        raise MinipeftError(f"{e}: {TORCH_MISSING}") from None
    return torch, transformers, peft


def build_hf(cfg: BenchConfig):
    """A random transformers GPT2LMHeadModel (seeded), dropout 0, eos = the last token."""
    torch, transformers, _ = require_torch()
    torch.manual_seed(cfg.seed)
    hf_config = transformers.GPT2Config(
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
    hf = transformers.GPT2LMHeadModel(hf_config).to(getattr(torch, cfg.dtype))
    return hf.eval()


def minipeft_from_hf(hf):
    """minipeft's GPT2 on the same weights: the NumPy arrays share the torch tensors' memory."""
    from . import GPT2, GPT2Config
    from .io.checkpoint import normalize_names
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return GPT2(GPT2Config.from_hf_dict(hf.config.to_dict()), normalize_names(state, "bench"))


def minipeft_random(cfg: BenchConfig):
    """minipeft's GPT2 with GPT-2's random init, without torch (--no-torch, memory child)."""
    from . import GPT2, GPT2Config
    from .train.pretrain import init_params
    config = GPT2Config(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                        vocab_size=cfg.vocab_size, n_positions=cfg.n_positions)
    return GPT2(config, init_params(config, seed=cfg.seed, dtype=np.dtype(cfg.dtype)))


def lora_kwargs(cfg: BenchConfig) -> dict:
    """The LoRA config, the same on both sides."""
    return dict(r=cfg.r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.target_modules),
                lora_dropout=0.0, fan_in_fan_out=True)


def with_fresh_base(base):
    """A GPT2 sharing ``base``'s arrays in a new dict, so an adapter cannot rebind them."""
    return type(base)(base.config, dict(base.params))


def minipeft_lora(base, cfg: BenchConfig):
    """-> (PeftModel with LoRA, its AdamW) on a view of ``base``."""
    from . import LoraConfig, get_peft_model
    from .train.optim import AdamW
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(with_fresh_base(base), LoraConfig(**lora_kwargs(cfg)))
    return pm.train(), AdamW(pm.trainable_parameters(), lr=1e-4)


def torch_lora(hf, cfg: BenchConfig):
    """-> (peft model with LoRA on a copy of ``hf``, torch's AdamW)."""
    torch, _, peft = require_torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm_t = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(**lora_kwargs(cfg)))
    pm_t.train()
    opt = torch.optim.AdamW([p for p in pm_t.parameters() if p.requires_grad], lr=1e-4)
    return pm_t, opt


def batch_ids(cfg: BenchConfig):
    """-> (ids (B, T), prompt (1, P)): random tokens, the same on both sides."""
    rng = np.random.default_rng(cfg.seed)
    return (rng.integers(0, cfg.vocab_size - 1, size=(cfg.batch, cfg.seq)),
            rng.integers(0, cfg.vocab_size - 1, size=(1, cfg.prompt)))


# ==================================================================== the measured calls
def minipeft_step(pm, opt, ids):
    """One training step: loss, gradients of the trainable tensors, AdamW."""
    def step():
        loss, grads = pm.loss_and_grads(ids, ids)
        opt.step(grads)
        return loss
    return step


def torch_step(pm_t, opt, ids):
    """One training step of peft: forward with labels, backward, AdamW, zero_grad."""
    import torch
    tids = torch.as_tensor(ids)

    def step():
        loss = pm_t(input_ids=tids, labels=tids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def minipeft_forward(model, ids):
    return lambda: model(ids)


def torch_forward(hf, ids):
    import torch
    tids = torch.as_tensor(ids)

    def forward():
        with torch.no_grad():
            return hf(input_ids=tids, use_cache=False).logits
    return forward


def minipeft_decode(model, prompt, n):
    return lambda: model.generate(prompt, n, eos_token_id=None)


def torch_decode(hf, prompt, n):
    import torch
    tprompt = torch.as_tensor(prompt)
    mask = torch.ones_like(tprompt)
    eos = hf.config.eos_token_id

    def decode():
        with torch.no_grad():
            return hf.generate(tprompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=eos)
    return decode


def time_alternating(fns: dict, reps: int, warmup: int, pause: float = 0.0) -> dict:
    """{name: fn} -> {name: [seconds] * reps}: warm-ups first, then the reps in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            time.sleep(pause)               # the other library's idle threads stop spinning
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ==================================================================== memory
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
    import resource
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
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "minipeft.bench", "--_memory-child", side,
           "--_child-config", json.dumps(dataclasses.asdict(cfg))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"the {side} child failed (exit {proc.returncode}): " + " | ".join(tail)}
    return json.loads(lines[-1])


# ==================================================================== matmul peak and FLOPs
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


# ==================================================================== per-op profile
# What each timed call counts as. Time is exclusive: a call's children count for
# their own op, so the rows add up; what no wrapper sees is "other".
PROFILED_FUNCTIONS = {               # module -> {function looked up there at call time: op}
    "minipeft.model.gpt2": {
        "layernorm_forward": "layernorm fwd", "layernorm_backward": "layernorm bwd",
        "attention_forward": "attention fwd", "attention_backward": "attention bwd",
        "split_heads": "attention fwd", "merge_heads": "attention fwd",
        "split_heads_grad": "attention bwd", "merge_heads_backward": "attention bwd",
        "gelu_forward": "gelu fwd", "gelu_backward": "gelu bwd",
        "cross_entropy_forward": "cross-entropy fwd", "cross_entropy_backward": "cross-entropy bwd",
    },
    "minipeft.kernels.ops": {            # GPT2.ops with use_kernels (the default)
        "attention_forward": "attention fwd", "attention_backward": "attention bwd",
        "layernorm_forward": "layernorm fwd", "layernorm_backward": "layernorm bwd",
        "gelu_forward": "gelu fwd", "gelu_backward": "gelu bwd",
        "cross_entropy": "cross-entropy fwd+bwd",
    },
    "minipeft.ops": {                    # GPT2.ops with use_kernels = False (the NumPy twins)
        "attention_forward": "attention fwd", "attention_backward": "attention bwd",
        "layernorm_forward": "layernorm fwd", "layernorm_backward": "layernorm bwd",
        "gelu_forward": "gelu fwd", "gelu_backward": "gelu bwd",
        "cross_entropy": "cross-entropy fwd+bwd",
    },
    "minipeft.kernels.lora": {
        "lora_forward": "LoRA fwd", "lora_backward": "LoRA bwd", "dora_weight_norm": "LoRA fwd",
        "dora_forward": "LoRA fwd", "dora_backward": "LoRA bwd",
    },
    "minipeft.peft.lora": {
        "lora_forward": "LoRA fwd", "lora_backward": "LoRA bwd", "dora_weight_norm": "LoRA fwd",
        "dora_forward": "LoRA fwd", "dora_backward": "LoRA bwd", "dropout_mask": "LoRA fwd",
    },
}
PROFILED_METHODS = {                 # the model's hooks (model/gpt2.py): op
    "_embed": "embedding fwd", "_embed_backward": "embedding bwd",
    "_linear": "linear fwd (x W + b)", "_linear_backward": "linear bwd (dout Wᵀ)",
    "_attention": "attention fwd", "_attention_backward": "attention bwd",
    "_residual": "residual fwd", "_residual_backward": "residual bwd",
    "_block_forward": "residual fwd", "_block_backward": "residual bwd",   # the blocks' own adds
    "_forward_embedded": "lm_head fwd (xf wteᵀ)", "backward": "lm_head bwd (dlogits wte)",
}
PROFILE_ORDER = ["embedding fwd", "layernorm fwd", "linear fwd (x W + b)", "LoRA fwd",
                 "attention fwd", "gelu fwd", "residual fwd", "lm_head fwd (xf wteᵀ)",
                 "cross-entropy fwd", "cross-entropy bwd", "lm_head bwd (dlogits wte)",
                 "residual bwd", "gelu bwd", "attention bwd", "LoRA bwd", "linear bwd (dout Wᵀ)",
                 "layernorm bwd", "embedding bwd", "AdamW step", "other"]


class OpTimer:
    """Wraps callables with timers that count exclusive time per op."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self._children = []              # a stack: time spent in the children of each open call

    def wrap(self, op: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._children.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.seconds[op] += dt - self._children.pop()
                if self._children:
                    self._children[-1] += dt
        return timed


@contextlib.contextmanager
def profiled(model, opt):
    """Within the block, the ops of ``model`` and ``opt.step`` are timed: yields the OpTimer."""
    timer, undo = OpTimer(), []
    for module_name, ops in PROFILED_FUNCTIONS.items():
        module = importlib.import_module(module_name)
        for name, op in ops.items():
            if hasattr(module, name):
                undo.append((module, name, getattr(module, name)))
                setattr(module, name, timer.wrap(op, getattr(module, name)))
    for name, op in PROFILED_METHODS.items():
        if hasattr(model, name):
            setattr(model, name, timer.wrap(op, getattr(model, name)))     # instance attribute
            undo.append((model, name, None))
    opt.step = timer.wrap("AdamW step", opt.step)
    undo.append((opt, "step", None))
    try:
        yield timer
    finally:
        for obj, name, original in reversed(undo):
            if original is None:
                delattr(obj, name)                                       # back to the class's
            else:
                setattr(obj, name, original)


def profile_step(pm, opt, ids, reps: int) -> dict:
    """-> {op: ms per step} of minipeft's LoRA training step (plus 'total', 'other')."""
    step = minipeft_step(pm, opt, ids)
    step()                                                               # warm-up
    with profiled(pm, opt) as timer:
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        total = time.perf_counter() - t0
    ms = {op: 1000 * s / reps for op, s in timer.seconds.items()}
    ms["other"] = 1000 * total / reps - sum(ms.values())
    ms["total"] = 1000 * total / reps
    return ms


# ==================================================================== every PEFT method
METHODS = [   # (label, config maker taking the minipeft module); add a method with one line
    ("LoRA", lambda m, cfg: m.LoraConfig(**lora_kwargs(cfg))),
    ("DoRA", lambda m, cfg: m.LoraConfig(**lora_kwargs(cfg), use_dora=True)),
    ("IA3", lambda m, cfg: m.IA3Config()),
    ("prefix tuning (20)", lambda m, cfg: m.PrefixTuningConfig(num_virtual_tokens=20)),
    ("prompt tuning (20)", lambda m, cfg: m.PromptTuningConfig(num_virtual_tokens=20)),
    ("bottleneck (pfeiffer)", lambda m, cfg: m.BottleneckConfig(preset="pfeiffer")),
]


def method_models(base, cfg: BenchConfig):
    """-> [(label, step or None, trainable count, note)]: a training step per method,
    or why it was skipped."""
    import minipeft as m
    from .train.optim import AdamW
    out = []
    for label, make in METHODS:
        try:
            config = make(m, cfg)
        except AttributeError as e:
            out.append((label, None, 0, f"skipped: not in minipeft yet ({e})"))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pm = m.get_peft_model(with_fresh_base(base), config)
            opt = AdamW(pm.trainable_parameters(), lr=1e-4)
            ids, _ = batch_ids(cfg)
            step = minipeft_step(pm.train(), opt, ids)
            step()                                       # fails here rather than mid-timing
        except Exception as e:                           # a method being written: say so, go on
            out.append((label, None, 0, f"skipped: {type(e).__name__}: {e}"))
            continue
        n = sum(a.size for a in pm.trainable_parameters().values())
        out.append((label, step, n, ""))
    return out


def measure_methods(base, cfg: BenchConfig) -> list[dict]:
    """Each method's training step, round-robin, median; time relative to LoRA's."""
    models = method_models(base, cfg)
    steps = {label: step for label, step, _, _ in models if step is not None}
    times = time_alternating(steps, cfg.reps, 0, cfg.pause)      # method_models warmed them up
    lora = median(times.get("LoRA", []))
    rows = []
    for label, step, n, note in models:
        t = median(times.get(label, []))
        rows.append({"method": label, "trainable": n, "seconds": t, "tokens_per_s": cfg.tokens / t,
                     "vs_lora": t / lora, "note": note})
    return rows


# ==================================================================== the run
def machine_info(with_torch: bool) -> dict:
    """CPU model, cores, library versions, BLAS."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": "?"}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:                                    # older numpy: no mode="dicts"
        pass
    threads = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                "MKL_NUM_THREADS") if k in os.environ]
    info["threads"] = ", ".join(threads) or "library defaults"
    import numba
    info["numba"] = numba.__version__
    if with_torch:
        import peft
        import torch
        import transformers
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    transformers=transformers.__version__, peft=peft.__version__)
    return info


_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:5.1f} s] {msg}", file=sys.stderr, flush=True)


def run(cfg: BenchConfig, command: str = "python -m minipeft.bench") -> dict:
    """Measure every section of ``cfg.sections``, print the report, return the numbers."""
    if cfg.torch:
        require_torch()
    res = {"config": dataclasses.asdict(cfg), "command": command,
           "machine": machine_info(cfg.torch), "times": {}}
    want = set(cfg.sections)
    ids, prompt = batch_ids(cfg)
    hf = base = pm = opt = None
    if want - {"memory", "matmul"}:                  # the sections that run a model here
        if cfg.torch:
            _log("building the random GPT-2 (transformers) and minipeft's copy")
            hf = build_hf(cfg)
            base = minipeft_from_hf(hf)
            res["machine"]["attn_implementation"] = getattr(hf.config, "_attn_implementation", "?")
            res["check"] = same_weights_check(base, hf, ids)
        else:
            base = minipeft_random(cfg)
        pm, opt = minipeft_lora(base, cfg)

    if "train" in want:
        _log(f"LoRA training step, {cfg.reps} alternating reps")
        fns = {"minipeft": minipeft_step(pm, opt, ids)}
        if cfg.torch:
            fns["torch"] = torch_step(*torch_lora(hf, cfg), ids)
        res["times"]["train"] = time_alternating(fns, cfg.reps, cfg.warmup, cfg.pause)
    if "forward" in want:
        _log("forward (logits, no grad)")
        fns = {"minipeft": minipeft_forward(base, ids)}
        if cfg.torch:
            fns["torch"] = torch_forward(hf, ids)
        res["times"]["forward"] = time_alternating(fns, cfg.reps, cfg.warmup, cfg.pause)
    if "decode" in want:
        _log("greedy decode with a KV cache")
        fns = {"minipeft": minipeft_decode(base, prompt, cfg.new_tokens)}
        if cfg.torch:
            fns["torch"] = torch_decode(hf, prompt, cfg.new_tokens)
            res["check"]["same_tokens"] = bool(np.array_equal(fns["minipeft"](), fns["torch"]().numpy()))
        res["times"]["decode"] = time_alternating(fns, cfg.reps, cfg.warmup, cfg.pause)
    if "memory" in want:
        _log("peak memory of the training step (child processes)")
        res["memory"] = {side: measure_memory(side, cfg)
                         for side in (("minipeft", "torch") if cfg.torch else ("minipeft",))}
    if "matmul" in want:
        _log("numpy matmul on the step's shapes")
        res["matmul"] = matmul_rates(cfg)
        res["matmul_peak_gflops"] = matmul_peak(res["matmul"])
    if "profile" in want:
        _log("per-op profile of minipeft's LoRA step")
        res["profile"] = profile_step(pm, opt, ids, cfg.reps)
    if "methods" in want:
        _log("every PEFT method's training step")
        res["methods"] = measure_methods(base, cfg)
    print_report(res, cfg)
    return res


def same_weights_check(base, hf, ids) -> dict:
    """The two models are the same: max|a − b| / max|b| of their logits on the batch."""
    import torch
    with torch.no_grad():
        ref = hf(input_ids=torch.as_tensor(ids), use_cache=False).logits.numpy()
    ours = base(ids)
    return {"logits_rel_diff": float(np.abs(ours - ref).max() / np.abs(ref).max())}


# ==================================================================== the report
TARGETS = {"train": "≥ 1.5", "forward": "≥ 1.2", "decode": "≥ 1.2", "memory": "≤ 0.75"}


def _fmt(x, digits=1):
    return "—" if x is None or x != x else f"{x:,.{digits}f}"


def main_rows(res: dict, cfg: BenchConfig) -> list[tuple]:
    """(metric, minipeft, torch, ratio, target) for each measured section."""
    rows = []
    per_s = {"train": ("LoRA training step, tokens/s", cfg.tokens),
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
    print(f"\nmachine: {mach['cpu']}, {mach['cores']} CPUs; python {mach['python']}, numpy "
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
    print(f"LoRA step: {flops / 1e9:.3g} GFLOP (counted, see the module docstring); at the peak "
          f"a step would run {cap:,.1f} tokens/s")
    if "train" in res["times"]:
        for side, t in res["times"]["train"].items():
            rate = flops / median(t) / 1e9
            print(f"  {side}: {rate:.1f} GFLOP/s = {100 * rate / peak:.0f}% of the peak")


def print_profile(ms: dict, untimed_ms=None) -> None:
    total = ms["total"]
    plain = f"; {untimed_ms:.1f} ms without them, in the train section" if untimed_ms else ""
    print(f"\nminipeft LoRA training step by op (exclusive time, {total:.1f} ms per step "
          f"with the timers on{plain}):")
    ops = [op for op in PROFILE_ORDER if op in ms] + sorted(set(ms) - set(PROFILE_ORDER) - {"total"})
    rows = [(op, f"{ms[op]:.2f}", f"{100 * ms[op] / total:.1f}%") for op in ops]
    print_table(("op", "ms/step", "% of step"), rows, "<>>")


def print_methods(rows: list[dict]) -> None:
    print("\nminipeft training step per PEFT method (target: ≤ 1.1 × LoRA's time):")
    table = []
    for r in rows:
        if r["note"]:
            table.append((r["method"], "—", "—", "—", "—", r["note"]))
        else:
            table.append((r["method"], f"{r['trainable']:,d}", f"{1000 * r['seconds']:.1f}",
                          f"{r['tokens_per_s']:.1f}", f"{r['vs_lora']:.2f}", ""))
    print_table(("method", "trainable", "ms/step", "tokens/s", "time / LoRA's", "note"),
                table, "<>>>><")


# ==================================================================== command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's flags (``minipeft bench`` adds them to its sub-parser)."""
    p.add_argument("--quick", action="store_true",
                   help="a tiny GPT-2 (2 layers, n_embd 64): a smoke run in seconds")
    p.add_argument("--reps", "--steps", dest="reps", type=int,
                   help="alternating repetitions per measurement, median reported (default 5)")
    p.add_argument("--warmup", type=int, help="untimed runs of each side first (default 1)")
    p.add_argument("--batch", type=int, help="sequences per step (default 4)")
    p.add_argument("--seq", type=int, help="tokens per sequence (default 128)")
    p.add_argument("--prompt", type=int, help="decode: prompt tokens (default 16)")
    p.add_argument("--new-tokens", type=int, help="decode: new tokens (default 64)")
    p.add_argument("--r", type=int, help="LoRA rank (default 8; lora_alpha = 2r)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--no-torch", action="store_true", help="minipeft alone (torch not needed)")
    p.add_argument("--pause", type=float, help="seconds between alternating runs (default 0.2)")
    p.add_argument("--seed", type=int, default=0)


def config_from_args(args) -> BenchConfig:
    """The BenchConfig the flags ask for; a MinipeftError for a bad value."""
    cfg = BenchConfig(**(QUICK if args.quick else {}))
    for name in ("reps", "warmup", "batch", "seq", "prompt", "new_tokens", "r", "pause"):
        value = getattr(args, name)
        if value is not None:
            least = 0 if name in ("warmup", "pause") else 1
            if value < least:
                raise MinipeftError(f"--{name.replace('_', '-')} must be >= {least}, got {value}.")
            setattr(cfg, name, value)
    if args.r is not None:
        cfg.lora_alpha = 2.0 * args.r
    cfg.dtype, cfg.torch, cfg.seed = args.dtype, not args.no_torch, args.seed
    if args.only:
        sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown or not sections:
            raise MinipeftError(f"--only {args.only!r}: unknown section(s) {unknown}; choose "
                                f"from {','.join(SECTIONS)}.")
        cfg.sections = sections
    if cfg.seq > cfg.n_positions or cfg.prompt + cfg.new_tokens > cfg.n_positions:
        raise MinipeftError(f"--seq and --prompt + --new-tokens must fit in n_positions="
                            f"{cfg.n_positions}.")
    return cfg


def command_line(args, prog: str) -> str:
    """The command that repeats this run: ``prog`` and the flags that were given."""
    parts = ["--quick"] if args.quick else []
    for name in ("reps", "warmup", "batch", "seq", "prompt", "new_tokens", "r", "pause", "only"):
        if getattr(args, name) is not None:
            parts += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    parts += (["--dtype", args.dtype] if args.dtype != "float32" else []) + \
        (["--no-torch"] if args.no_torch else []) + (["--seed", str(args.seed)] if args.seed else [])
    return " ".join([prog] + [shlex.quote(p) for p in parts])


def run_args(args, prog: str = "minipeft bench") -> dict:
    """Run from flags parsed by a parser that add_arguments filled (``minipeft bench``
    calls this); a MinipeftError for a bad value."""
    return run(config_from_args(args), command_line(args, prog))


def main(argv=None, prog: str = "python -m minipeft.bench") -> int:
    """``python -m minipeft.bench [flags]``: run, print the report, return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--_memory-child", choices=["minipeft", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--_child-config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        if args._memory_child:
            cfg = BenchConfig(**json.loads(args._child_config))
            cfg.target_modules, cfg.sections = tuple(cfg.target_modules), tuple(cfg.sections)
            print(json.dumps(memory_child(args._memory_child, cfg)))
            return 0
        run_args(args, prog)
    except MinipeftError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
