"""The ``minipeft`` command (also ``python -m minipeft``).

Errors minipeft raises on purpose are printed as one message, without a
traceback, and the command exits with status 1.
"""
from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

from . import compare, info
from .bench import add_arguments as add_bench_arguments  # loads neither torch nor numba
from .bench import run_args as run_bench
from .demo import DemoConfig, run_demo
from .errors import MinipeftError
from .exercises.report import add_parser as add_exercises_parser  # minipeft exercises report
from .io.checkpoint import convert_checkpoint, load_folder, resolve_model_folder, save_folder, tokenizer_files
from .io.files import check_output_folder, check_text
from .model import GPT2
from .peft import (
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from .tokenizer import load_tokenizer
from .train.data import batches, encode_examples, read_jsonl
from .train.plots import plot_losses
from .train.pretrain import PretrainConfig, pretrain
from .train.trainer import Trainer, TrainingArguments, example_batches

# arguments that name files or folders: any bytes the file system takes are fine there;
# every other text argument (a prompt, module names, ...) must be UTF-8 text
PATH_ARGS = frozenset({"src", "dst", "out", "data", "eval_data", "model", "adapter", "tokenizer"})


def _check_text_args(args) -> None:
    """Refuse a text argument holding bytes that are not UTF-8 (Python keeps them as
    lone surrogates, which the tokenizer refuses with a traceback), naming it."""
    for name, value in vars(args).items():
        if isinstance(value, str) and name not in PATH_ARGS:
            check_text(value, "the prompt" if name == "prompt" else f"--{name.replace('_', '-')}")


def _output_folder(path, name: str):
    """The folder ``path`` (argument ``name``) to write into; a sentence, not an errno,
    when it or a folder above it is an existing file."""
    return check_output_folder(path, name)


def _os_error(e: OSError) -> str:
    """An OSError the commands did not foresee (permissions, a full disk, ...) as a sentence."""
    what = e.strerror or str(e)
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return (f"the system refused a file operation: {what}{where}. Check that the path exists, "
            "that you may read and write there, and that the disk has space.")


def _check_flags(args, **rules) -> None:
    """Refuse a bad flag value before any work, naming the flag as typed: a rule is the
    least value (an int: >= it) or 0.0 (> 0). argparse has already checked the types."""
    for name, low in rules.items():
        value = getattr(args, name)
        if value is not None and (value <= low if isinstance(low, float) else value < low):
            rule = "> 0" if isinstance(low, float) else f">= {low}"
            raise MinipeftError(f"--{name.replace('_', '-')} must be {rule}, got {value}.")


def _convert(args) -> None:
    _output_folder(args.dst, "DST")
    dst = convert_checkpoint(args.src, args.dst, overwrite=args.overwrite)
    config, params = load_folder(dst)
    n = sum(p.size for p in params.values())
    print(f"converted {args.src} -> {dst}: GPT-2 with n_layer={config.n_layer}, "
          f"n_head={config.n_head}, n_embd={config.n_embd}, vocab_size={config.vocab_size}, "
          f"{n:,} parameters (float32 safetensors)")


def _demo(args) -> None:
    _check_flags(args, steps=1, seed=0)
    if args.out is not None:
        _output_folder(args.out, "--out")
    cfg = DemoConfig(steps=args.steps, seed=args.seed)
    if args.quick:                                  # a smoke run: seconds, not a minute
        cfg = DemoConfig(steps=args.steps if args.steps != DemoConfig.steps else 60, n_train=200,
                         n_eval=8, max_new_tokens=24, seed=args.seed)
    run_demo(cfg, out=args.out, overwrite=args.overwrite, progress=not args.no_progress)


def _pretrain(args) -> None:
    _check_flags(args, vocab_size=1, n_layer=1, n_head=1, n_embd=1, block_size=1, batch_size=1,
                 warmup_steps=0, steps=1, lr=0.0, seed=0)
    _output_folder(args.out, "OUT")
    cfg = PretrainConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                         n_embd=args.n_embd, block_size=args.block_size, batch_size=args.batch_size,
                         steps=args.steps, learning_rate=args.lr, warmup_steps=args.warmup_steps,
                         seed=args.seed)
    summary = pretrain(args.data, args.out, cfg, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"pretrained {summary['parameters']:,} parameters in {summary['seconds']:.0f} s: "
          f"train loss {summary['final_train_loss']:.4f}, val loss {summary['final_val_loss']:.4f} "
          f"-> {args.out}")


# the flags of each --method (a flag of another method is refused, not silently ignored)
METHOD_FLAGS = {
    "lora": ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora"),
    "ia3": ("target_modules", "feedforward_modules", "c_attn_slices"),
    "prefix": ("num_virtual_tokens", "prefix_projection", "encoder_hidden_size"),
    "prompt": ("num_virtual_tokens", "prompt_init", "prompt_init_text"),
    "bottleneck": ("adapter_preset", "reduction_factor", "non_linearity"),
}


def _names(value):
    """"a,b" -> ["a", "b"]; "all-linear" stays a string; None stays None."""
    return value if value in (None, "all-linear") else [t for t in value.split(",") if t]


def _peft_config(args, tokenizer: str):
    """The config of ``--method`` from its flags (peft's defaults for flags not given)."""
    for method, flags in METHOD_FLAGS.items():
        for flag in flags:
            if method != args.method and getattr(args, flag) is not None \
                    and flag not in METHOD_FLAGS[args.method]:
                raise MinipeftError(f"--{flag.replace('_', '-')} is a flag of --method {method}, "
                                    f"not of --method {args.method}.")
    given = {f: getattr(args, f) for f in METHOD_FLAGS[args.method] if getattr(args, f) is not None}
    if args.method == "lora":
        return LoraConfig(r=given.get("r", 8), lora_alpha=given.get("lora_alpha", 16),
                          lora_dropout=given.get("lora_dropout", 0.05),
                          target_modules=_names(given.get("target_modules", "c_attn")),
                          bias=given.get("bias", "none"), use_rslora=bool(given.get("use_rslora")),
                          use_dora=bool(given.get("use_dora")), fan_in_fan_out=True)
    if args.method == "ia3":
        return IA3Config(target_modules=_names(given.get("target_modules")),
                         feedforward_modules=_names(given.get("feedforward_modules")),
                         c_attn_slices=_names(given.get("c_attn_slices")), fan_in_fan_out=True)
    if args.method == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=given.get("num_virtual_tokens", 20),
                                  prefix_projection=bool(given.get("prefix_projection")),
                                  encoder_hidden_size=given.get("encoder_hidden_size"))
    if args.method == "prompt":
        init = given.get("prompt_init", "random").upper()
        return PromptTuningConfig(num_virtual_tokens=given.get("num_virtual_tokens", 20),
                                  prompt_tuning_init=init,
                                  prompt_tuning_init_text=given.get("prompt_init_text"),
                                  tokenizer_name_or_path=tokenizer if init == "TEXT" else None)
    kwargs = {k: given[k] for k in ("reduction_factor", "non_linearity") if k in given}
    return BottleneckConfig(preset=given.get("adapter_preset", "pfeiffer"), **kwargs)


def _finetune(args) -> None:

    _check_flags(args, r=1, lora_alpha=0.0, num_virtual_tokens=1, encoder_hidden_size=1,
                 reduction_factor=0.0, batch_size=1, grad_accum=1, warmup_steps=0,
                 weight_decay=0, max_grad_norm=0, max_length=2, eval_steps=1, save_steps=1,
                 steps=1, lr=0.0, seed=0)
    out = _output_folder(args.out, "OUT")
    if out.exists() and any(out.iterdir()) and not (args.overwrite or args.resume):
        raise MinipeftError(f"{out} exists and is not empty; choose another folder, pass --resume "
                            "to continue its run, or --overwrite.")
    model = GPT2.from_pretrained(args.model)
    tok = load_tokenizer(args.tokenizer or args.model)
    eos = tok.token_to_id("<|endoftext|>")
    max_length = args.max_length or model.config.n_positions
    encoded = encode_examples(read_jsonl(args.data), tok, max_length, eos, truncate=args.truncate)
    eval_batches = None
    if args.eval_data:
        eval_enc = encode_examples(read_jsonl(args.eval_data), tok, max_length, eos, truncate=args.truncate)
        eval_batches = batches(eval_enc, args.batch_size, args.seed, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, _peft_config(args, args.tokenizer or args.model), seed=args.seed)
    pm.print_trainable_parameters()
    targs = TrainingArguments(learning_rate=args.lr, max_steps=args.steps,
                              gradient_accumulation_steps=args.grad_accum, warmup_steps=args.warmup_steps,
                              lr_scheduler_type=args.schedule, weight_decay=args.weight_decay,
                              max_grad_norm=args.max_grad_norm or None,
                              eval_steps=args.eval_steps if eval_batches else None,
                              save_steps=args.save_steps or args.steps, seed=args.seed,
                              overwrite_output_dir=args.overwrite)
    trainer = Trainer(pm, targs, example_batches(encoded, args.batch_size, args.seed, args.grad_accum),
                      eval_batches=eval_batches, output_dir=out, progress=not args.no_progress)
    history = trainer.train(resume_from_checkpoint=True if args.resume else None)
    pm.save_pretrained(out / "adapter")
    plot_losses(history, out / "loss.png")
    last = history[-1] if history else {}
    print(f"trained {trainer.step} steps, last loss {last.get('loss', float('nan')):.4f}"
          + (f", eval loss {last['eval_loss']:.4f}" if "eval_loss" in last else "")
          + f"; adapter (peft's format) in {out / 'adapter'}, plot in {out / 'loss.png'}")


def _generate(args) -> None:

    _check_flags(args, max_new_tokens=0, top_k=1, seed=0)
    model = GPT2.from_pretrained(args.model)
    tok = load_tokenizer(args.tokenizer or args.model)
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter)
    ids = tok.encode(args.prompt).ids
    if not ids:
        raise MinipeftError("the prompt is empty; give some text to continue.")
    eos = tok.token_to_id("<|endoftext|>")
    out = model.generate(np.array([ids]), args.max_new_tokens, do_sample=args.do_sample,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         seed=args.seed, eos_token_id=eos, pad_token_id=eos)
    print(tok.decode(list(out[0]), skip_special_tokens=True))


def _merge(args) -> None:
    _output_folder(args.out, "OUT")
    pm = PeftModel.from_pretrained(GPT2.from_pretrained(args.model), args.adapter)
    if not hasattr(pm, "merge_and_unload"):
        raise MinipeftError(f"{args.adapter} is a {pm.active_peft_config.peft_type} adapter, which adds "
                            "tokens or layers rather than changing weights: it cannot be merged. Merge "
                            "LoRA or IA3 adapters; run this one with --adapter in `minipeft generate`.")
    merged = pm.merge_and_unload()
    dst = save_folder(args.out, merged.config, merged.params, overwrite=args.overwrite,
                      extra_files=tokenizer_files(resolve_model_folder(args.model)))
    print(f"merged {args.adapter} into {args.model} -> {dst} (a plain GPT-2 folder)")


def _info(args) -> None:
    info.print_info(args.model, r=args.r)   # looked up here: a test replaces it


def _bench(args) -> None:
    run_bench(args)


def _training_flags(p, steps, lr):
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--seed", type=int, default=0, help="makes the run repeatable (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


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

    p = sub.add_parser("demo", help="the main job: LoRA fine-tuning of the bundled model, offline",
                       description="Fine-tune the bundled tiny-shakespeare GPT-2 with LoRA to write "
                       "restaurant descriptions: before/after outputs and scores, a loss plot and "
                       "the adapter in peft's format.")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default: minipeft-demo-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--quick", action="store_true", help="a few steps on a few examples (a smoke test)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_demo)

    p = sub.add_parser("pretrain", help="train a tokenizer and a small GPT-2 from scratch on a text file",
                       description="How the bundled model is made (see weights/README.md).")
    p.add_argument("data", help="a UTF-8 text file")
    p.add_argument("out", help="output folder, e.g. weights/tiny-shakespeare")
    for flag, default in (("vocab-size", 2048), ("n-layer", 4), ("n-head", 4), ("n-embd", 128),
                          ("block-size", 128), ("batch-size", 16), ("warmup-steps", 100)):
        p.add_argument(f"--{flag}", type=int, default=default, help=f"(default {default})")
    _training_flags(p, 1500, 3e-3)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("finetune", help="fine-tuning (LoRA, IA3, prefix, prompt, bottleneck) on "
                       "JSONL prompt/completion data",
                       description="Each line of DATA is {\"prompt\": ..., \"completion\": ...}; "
                       "the loss counts the completion tokens only.")
    p.add_argument("model", help="a model folder or name (e.g. tiny-shakespeare)")
    p.add_argument("data", help="training data, JSONL")
    p.add_argument("out", help="output folder: checkpoints, adapter/, loss.png")
    p.add_argument("--eval-data", help="held-out JSONL: eval loss and perplexity")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    p.add_argument("--method", choices=list(METHOD_FLAGS), default="lora",
                   help="the PEFT method (default lora); each has its own flags below")
    g = p.add_argument_group("lora (LoRA, rsLoRA, DoRA)")
    g.add_argument("--r", type=int, help="rank (default 8)")
    g.add_argument("--lora-alpha", type=float, help="alpha; scaling alpha/r (default 16)")
    g.add_argument("--lora-dropout", type=float, help="dropout on the LoRA input (default 0.05)")
    g.add_argument("--target-modules",
                   help="lora, ia3: comma-separated (c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj) or "
                   "all-linear (lora default c_attn; ia3 default peft's c_attn,mlp.c_proj)")
    g.add_argument("--bias", choices=["none", "all", "lora_only"])
    g.add_argument("--use-rslora", action="store_true", default=None)
    g.add_argument("--use-dora", action="store_true", default=None)
    g = p.add_argument_group("ia3")
    g.add_argument("--feedforward-modules", help="the targets whose input is scaled (default mlp.c_proj)")
    g.add_argument("--c-attn-slices", help="which of q,k,v of c_attn are scaled (the paper: k,v)")
    g = p.add_argument_group("prefix, prompt")
    g.add_argument("--num-virtual-tokens", type=int, help="virtual tokens (default 20)")
    g.add_argument("--prefix-projection", action="store_true", default=None,
                   help="prefix: train through the reparametrization MLP")
    g.add_argument("--encoder-hidden-size", type=int, help="prefix: the MLP's width")
    g.add_argument("--prompt-init", choices=["random", "text", "sample_vocab"],
                   help="prompt: how the virtual tokens start (default random)")
    g.add_argument("--prompt-init-text", help="prompt: the text for --prompt-init text")
    g = p.add_argument_group("bottleneck adapters")
    g.add_argument("--adapter-preset", choices=["pfeiffer", "houlsby", "parallel"],
                   help="AdapterHub's seq_bn, double_seq_bn or par_bn (default pfeiffer)")
    g.add_argument("--reduction-factor", type=float, help="n_embd / bottleneck width (default 16)")
    g.add_argument("--non-linearity", help="relu, swish, gelu or tanh (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--schedule", choices=["constant", "linear", "cosine"], default="linear")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--max-length", type=int, help="longest example in tokens (default n_positions)")
    p.add_argument("--truncate", action="store_true",
                   help="cut long prompts from the left instead of refusing them")
    p.add_argument("--eval-steps", type=int, default=50)
    p.add_argument("--save-steps", type=int, help="checkpoint every N steps (default: at the end)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    p.add_argument("--overwrite", action="store_true")
    _training_flags(p, 200, 3e-3)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("bench", help="minipeft against torch + peft on this CPU: speed and memory, "
                       "one run", description="Measures minipeft and torch + peft alternately on the "
                       "same shapes and random weights (see benchmarks/README.md).")
    add_bench_arguments(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("compare", help="every PEFT method on the demo task with one budget: a table, "
                       "a figure and the adapters", description="Trains full fine-tuning, LoRA, "
                       "rsLoRA, DoRA, IA3, prefix and prompt tuning and the Pfeiffer and Houlsby "
                       "adapters on the demo task with one budget; writes results.json, results.csv, "
                       "compare.png and the adapters.")
    compare.add_arguments(p)
    p.set_defaults(func=compare.main)

    p = sub.add_parser("generate", help="continue a prompt (greedy or sampled), with an adapter or not")
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("--adapter", help="an adapter folder (peft's format; any method)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_generate)

    p = sub.add_parser("merge", help="merge a LoRA or IA3 adapter into its model: a plain GPT-2 folder")
    p.add_argument("model")
    p.add_argument("adapter")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_merge)

    p = sub.add_parser("info", help="parameters and training memory per PEFT method")
    p.add_argument("model", nargs="?", default="tiny-shakespeare")
    p.add_argument("--r", type=int, default=8, help="LoRA rank for the table (default 8)")
    p.set_defaults(func=_info)
    add_exercises_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_text_args(args)
        args.func(args)
    except MinipeftError as e:
        print(f"minipeft {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:                    # disk full, permissions, ...: a sentence, no errno
        print(f"minipeft {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
