"""The command line: ``minipeft bench`` and ``python -m minipeft.bench`` share these flags."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from ..errors import MinipeftError
from .config import QUICK, SECTIONS, BenchConfig
from .memory import memory_child
from .run import run

DESCRIPTION = "minipeft against torch + peft on a CPU, measured in one run."


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
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
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
