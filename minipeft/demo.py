"""``minipeft demo``: PEFT from start to finish, offline, in about a minute.

1. Load the bundled ``tiny-shakespeare`` GPT-2 (pretrained by ``minipeft pretrain``
   on Shakespeare's plays): it writes pseudo-Shakespeare, not restaurant descriptions.
2. The task (``minipeft.tasks.restaurants``): a restaurant's attributes -> one sentence,
   as in the E2E NLG data the LoRA paper fine-tunes GPT-2 on.
3. Show what the base model writes, and its exact-match and slot-error scores.
4. Add LoRA, train a tiny fraction of the parameters, with a progress bar.
5. Show what the adapted model writes, and the scores after; save the adapter (peft's
   format), the loss plot and the figures in an output folder.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import refuse_unknown_fields
from .errors import ConfigError, InputError
from .io.atomic import atomic_file
from .io.files import check_output_folder
from .model import GPT2
from .peft import LoraConfig, get_peft_model
from .tasks.restaurants import make_examples, score
from .tokenizer import load_tokenizer
from .train.data import batches, encode_examples
from .train.plots import plot_losses
from .train.trainer import Trainer, TrainingArguments, example_batches

BUNDLED = "tiny-shakespeare"


@refuse_unknown_fields
@dataclass
class DemoConfig:
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-2
    r: int = 16
    lora_alpha: int = 32
    n_train: int = 2000
    n_eval: int = 50
    max_new_tokens: int = 40
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "r", "n_train", "n_eval", "max_new_tokens", "seed"):
            v, least = getattr(self, name), 0 if name == "seed" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ConfigError(f"the demo's {name} must be an integer >= {least}, got {v!r}.")
        for name in ("learning_rate", "lora_alpha"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ConfigError(f"the demo's {name} must be a number > 0, got {v!r}.")


def one_line(examples) -> list[dict]:
    """Each answer ends with a line break, which the Shakespeare model already knows how
    to write (its <|endoftext|> never occurred in its training text)."""
    return [{**e, "completion": e["completion"] + "\n"} for e in examples]


def greedy_completions(model, tok, prompts, max_new_tokens, eos_id) -> list[str]:
    """Greedy completions of a batch of prompts (left-padded, one generate call), each
    cut at its first line break: the task's answers are one line."""
    encoded = [tok.encode(p).ids for p in prompts]
    T = max(len(e) for e in encoded)
    ids = np.full((len(encoded), T), eos_id, dtype=np.int64)
    mask = np.zeros((len(encoded), T), dtype=np.int64)
    for i, e in enumerate(encoded):
        ids[i, T - len(e):], mask[i, T - len(e):] = e, 1
    out = model.generate(ids, max_new_tokens, attention_mask=mask, eos_token_id=eos_id,
                         pad_token_id=eos_id)
    texts = []
    for row in out[:, T:]:
        row = list(row)
        if eos_id in row:
            row = row[:row.index(eos_id)]
        texts.append(tok.decode(row, skip_special_tokens=False).split("\n")[0])
    return texts


def _show(title, examples, predictions, k=3):
    print(f"\n{title}")
    for ex, pred in zip(examples[:k], predictions[:k]):
        print(f"  {ex['prompt'].splitlines()[0]}")
        print(f"    -> {pred.strip()!r}")


def run_demo(cfg: DemoConfig | None = None, out=None, overwrite=False, model_name=BUNDLED,
             progress=True) -> dict:
    cfg = cfg or DemoConfig()
    start = time.perf_counter()
    out = Path(out) if out is not None else Path(f"minipeft-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_folder(out, "the demo's output folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; give another --out or pass --overwrite.")
    model = GPT2.from_pretrained(model_name)
    tok = load_tokenizer(model_name)
    eos = tok.token_to_id("<|endoftext|>")
    train_ex = make_examples(cfg.n_train, seed=cfg.seed)
    eval_ex = make_examples(cfg.n_eval, seed=cfg.seed + 1_000_003)
    print(f"minipeft demo: LoRA fine-tuning of the bundled GPT-2 {model_name!r} "
          f"({model.num_parameters():,} parameters, pretrained on Shakespeare) to write a sentence "
          f"from a restaurant's attributes. {len(train_ex)} training examples, {len(eval_ex)} held out.")

    eval_prompts = [e["prompt"] for e in eval_ex]
    before = greedy_completions(model, tok, eval_prompts, cfg.max_new_tokens, eos)
    score_before = score(before, eval_ex)
    _show("Before fine-tuning, the base model writes:", eval_ex, before)
    print(f"  exact match {score_before['exact_match']:.0%}, slot error {score_before['slot_error']:.0%}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # fan_in_fan_out: set for GPT-2's Conv1D, as peft
        pm = get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=0.05,
                                              target_modules="all-linear"), seed=cfg.seed)
    print(f"\nLoRA adapter (r={cfg.r}, alpha={cfg.lora_alpha}) on every linear layer of every block:")
    for name, a in list(pm.trainable_parameters().items())[:4]:
        print(f"  {name:62s} {str(a.shape):>12s}")
    print(f"  ... ({len(pm.trainable_parameters())} tensors)")
    pm.print_trainable_parameters()

    encoded = encode_examples(one_line(train_ex), tok, model.config.n_positions, eos)
    eval_batches = batches(encode_examples(one_line(eval_ex), tok, model.config.n_positions, eos),
                           cfg.batch_size, cfg.seed, 0)
    args = TrainingArguments(learning_rate=cfg.learning_rate, max_steps=cfg.steps,
                             warmup_steps=max(1, cfg.steps // 20), lr_scheduler_type="linear",
                             eval_steps=max(1, cfg.steps // 4), seed=cfg.seed)
    print()
    history = Trainer(pm, args, example_batches(encoded, cfg.batch_size, cfg.seed),
                      eval_batches=eval_batches, progress=progress).train()

    after = greedy_completions(pm, tok, eval_prompts, cfg.max_new_tokens, eos)
    score_after = score(after, eval_ex)
    _show("After fine-tuning, the same model with its LoRA adapter writes:", eval_ex, after)
    print(f"  exact match {score_after['exact_match']:.0%}, slot error {score_after['slot_error']:.0%}")

    out.mkdir(parents=True, exist_ok=True)
    pm.save_pretrained(out / "adapter")
    plot_losses(history, out / "loss.png", title="LoRA on the restaurant task")
    seconds = time.perf_counter() - start
    result = {"before": score_before, "after": score_after, "steps": cfg.steps,
              "final_loss": history[-1]["loss"], "eval_loss": history[-1].get("eval_loss"),
              "seconds": round(seconds, 1)}
    with atomic_file(out / "metrics.json") as f:         # a temp file of its own, then a rename
        f.write((json.dumps(result, indent=2) + "\n").encode())
    print(f"\nSaved to {out}/: adapter/ (peft's format: adapter_config.json + "
          f"adapter_model.safetensors), loss.png, metrics.json. Took {seconds:.0f} s.")
    return result
