"""The ``minipeft`` command (also ``python -m minipeft``).

Errors minipeft raises on purpose are printed as one message, without a
traceback, and the command exits with status 1.
"""
from __future__ import annotations

import argparse
import sys

from .errors import MinipeftError


def _convert(args) -> None:
    from .io.checkpoint import convert_checkpoint, load_folder
    dst = convert_checkpoint(args.src, args.dst, overwrite=args.overwrite)
    config, params = load_folder(dst)
    n = sum(p.size for p in params.values())
    print(f"converted {args.src} -> {dst}: GPT-2 with n_layer={config.n_layer}, "
          f"n_head={config.n_head}, n_embd={config.n_embd}, vocab_size={config.vocab_size}, "
          f"{n:,} parameters (float32 safetensors)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minipeft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("convert", help="convert a Hugging Face GPT-2 folder into weights/<name>/",
                       description="Convert a Hugging Face GPT-2 folder (config.json + "
                       "model.safetensors or pytorch_model.bin) into a checked float32 "
                       "safetensors folder that minipeft loads without torch.")
    p.add_argument("src", help="Hugging Face GPT-2 folder")
    p.add_argument("dst", help="output folder, e.g. weights/gpt2")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=_convert)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (MinipeftError, OSError) as e:   # OSError: disk full, permissions, ...
        print(f"minipeft {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
