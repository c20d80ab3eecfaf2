"""The training loop: AdamW, a learning-rate schedule, clipping, accumulation, eval, resume.

One optimizer step, as transformers' Trainer does it:

    lr    = learning_rate · schedule(step)                    warm-up, then linear/cosine decay
    g     = Σ_j ∇ loss(micro-batch j) / accumulation_steps    gradient accumulation
    g     = g · min(1, max_grad_norm / ‖g‖)                   clipping by global norm
    θ     = AdamW(θ, g, lr)                                   decoupled weight decay

Everything a step depends on is a function of (seed, step): the batches come from
``batches_for_step(step)`` and LoRA dropout is reseeded per micro-batch, so a run
resumed from a checkpoint continues exactly as the uninterrupted run would. The
trained tensors are the model's own arrays (``trainable_parameters()``), updated in place.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import refuse_unknown_fields
from ..errors import ConfigError, MinipeftError, WeightsNotFoundError
from .optim import AdamW, clip_grad_norm, lr_multiplier

STATE_NAME = "trainer_state.json"
TENSORS_NAME = "training_tensors.safetensors"


class TrainingError(MinipeftError):
    """Training cannot go on (a NaN loss, an exploding gradient)."""


@refuse_unknown_fields
@dataclass
class TrainingArguments:
    """The knobs of a run, with transformers' TrainingArguments names."""
    learning_rate: float = 1e-3
    max_steps: int = 100
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    lr_scheduler_type: str = "linear"          # "constant", "linear" or "cosine"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0          # None: no clipping
    eval_steps: int | None = None              # evaluate every N steps (and at the end)
    save_steps: int | None = None              # checkpoint every N steps (and at the end)
    save_total_limit: int = 2                  # checkpoints kept
    seed: int = 0

    def __post_init__(self):
        for name in ("max_steps", "gradient_accumulation_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}.")
        for name in ("eval_steps", "save_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name} must be None or an integer >= 1, got {v!r}.")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ConfigError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}.")
        if not (_is_number(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate!r}.")
        if self.max_grad_norm is not None and not (_is_number(self.max_grad_norm)
                                                   and self.max_grad_norm > 0):
            raise ConfigError(f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}.")
        if not (isinstance(self.save_total_limit, int) and self.save_total_limit >= 1):
            raise ConfigError(f"save_total_limit must be an integer >= 1, got {self.save_total_limit!r}.")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a number >= 0 (0: no decay), got {self.weight_decay!r}.")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            if not (_is_number(v) and 0 <= v < 1):
                raise ConfigError(f"{name} must be a number in [0, 1), got {v!r}.")
        if not (_is_number(self.adam_epsilon) and self.adam_epsilon > 0):
            raise ConfigError(f"adam_epsilon must be a number > 0 (e.g. 1e-8), got {self.adam_epsilon!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}.")
        lr_multiplier(self.lr_scheduler_type, 0, self.warmup_steps, self.max_steps)   # checks the name


def _is_number(x) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def trainable_parameters(model) -> dict[str, np.ndarray]:
    """The live arrays a run trains: a PeftModel's adapter, or a GPT2's ``trainable`` names."""
    if hasattr(model, "trainable_parameters"):
        return model.trainable_parameters()
    return {k: model.params[k] for k in sorted(model.trainable)}


def example_batches(encoded, batch_size: int, seed: int, accumulation: int = 1):
    """batches_for_step for fine-tuning data: epoch after epoch of shuffled batches,
    ``accumulation`` micro-batches per step; a pure function of the step."""
    from .data import batches
    if not encoded:
        raise ConfigError("no training examples: encode_examples(read_jsonl(path), ...) gave none; "
                          "give a JSONL file with at least one example.")
    for name, n in (("batch_size", batch_size), ("accumulation", accumulation)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {n!r}.")
    per_epoch = -(-len(encoded) // batch_size)
    cache: dict[int, list] = {}

    def for_step(step: int) -> list:
        out = []
        for j in range(accumulation):
            epoch, k = divmod(step * accumulation + j, per_epoch)
            if epoch not in cache:
                cache.clear()
                cache[epoch] = batches(encoded, batch_size, seed, epoch)
            out.append(cache[epoch][k])
        return out
    return for_step


def count_targets(labels) -> int:
    """Tokens that count in the loss after the shift (labels[:, 1:] != -100)."""
    return int(np.sum(np.asarray(labels)[:, 1:] != -100))


def evaluate(model, eval_batches) -> dict[str, float]:
    """Mean loss over every counted token of the eval batches, and its perplexity."""
    training = getattr(model, "training", False)
    if training:
        model.eval()
    total, n = 0.0, 0
    for ids, labels, mask in eval_batches:
        k = count_targets(labels)
        if k:
            total += float(model.loss(ids, labels, mask)) * k
            n += k
    if training:
        model.train()
    if n == 0:
        raise ConfigError("the eval data has no token to predict.")
    loss = total / n
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0))}


class Trainer:
    """Runs ``args.max_steps`` optimizer steps on ``model``.

    batches_for_step(step) -> list of micro-batches (ids, labels, attention_mask or None),
    ``gradient_accumulation_steps`` of them, a pure function of the step."""

    def __init__(self, model, args: TrainingArguments, batches_for_step: Callable[[int], list],
                 eval_batches=None, output_dir=None, progress: bool = True):
        self.model, self.args = model, args
        self.batches_for_step, self.eval_batches = batches_for_step, eval_batches
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.progress = progress
        self.params = trainable_parameters(model)
        if not self.params:
            raise ConfigError("the model has nothing to train (a PeftModel loaded for inference? "
                              "load it with is_trainable=True).")
        no_decay = {k for k in self.params if k.endswith(".bias") or ".ln_" in k}
        self.optimizer = AdamW(self.params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                               eps=args.adam_epsilon, weight_decay=args.weight_decay, no_decay=no_decay)
        self.step = 0
        self.history: list[dict] = []

    # ------------------------------------------------------------ one step
    def training_step(self) -> dict:
        """One optimizer step: accumulate, clip, AdamW. -> the step's log."""
        args, step = self.args, self.step
        micro = self.batches_for_step(step)
        if len(micro) != args.gradient_accumulation_steps:
            raise ConfigError(f"batches_for_step gave {len(micro)} micro-batches; "
                              f"gradient_accumulation_steps is {args.gradient_accumulation_steps}.")
        grads, loss = {}, 0.0
        for j, (ids, labels, mask) in enumerate(micro):
            if hasattr(self.model, "train"):
                self.model.train(seed=[args.seed, step, j])        # dropout masks: a function of the step
            l, g = self.model.loss_and_grads(ids, labels, mask)
            loss += l / len(micro)
            for k, v in g.items():                               # Σ_j ∇(loss_j / n)
                v = v / len(micro)
                grads[k] = v if k not in grads else grads[k] + v
        if not math.isfinite(loss):
            raise TrainingError(self._nan_message(f"the loss is {loss}"))
        norm = clip_grad_norm(grads, args.max_grad_norm) if args.max_grad_norm else \
            math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
        if not math.isfinite(norm):
            raise TrainingError(self._nan_message(f"the gradient norm is {norm}"))
        lr = args.learning_rate * lr_multiplier(args.lr_scheduler_type, step, args.warmup_steps,
                                                args.max_steps)
        self.optimizer.step(grads, lr=lr)
        self.step += 1
        return {"step": self.step, "loss": float(loss), "lr": lr, "grad_norm": float(norm)}

    def _nan_message(self, what):
        saved = self.latest_checkpoint()
        keep = f"the last good checkpoint is {saved}" if saved else "no checkpoint was written yet"
        return (f"training stopped at step {self.step + 1}: {what}. The weights were not updated; "
                f"{keep}. Lower the learning_rate or set max_grad_norm, then resume.")

    # ------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint=None) -> list[dict]:
        """Run to max_steps (from a checkpoint when given: a path, or True for the latest)."""
        if resume_from_checkpoint:
            path = self.latest_checkpoint() if resume_from_checkpoint is True else resume_from_checkpoint
            if path is None:
                raise WeightsNotFoundError(f"no checkpoint to resume from in {self.output_dir}; "
                                           "start afresh (without resume / --resume) or give a "
                                           "checkpoint folder.")
            self.load_checkpoint(path)
        args = self.args
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=args.max_steps, initial=self.step, desc="training", unit="step")
        try:
            while self.step < args.max_steps:
                log = self.training_step()
                last = self.step == args.max_steps
                if self.eval_batches is not None and args.eval_steps and \
                        (self.step % args.eval_steps == 0 or last):
                    log.update(evaluate(self.model, self.eval_batches))
                self.history.append(log)
                if self.output_dir is not None and args.save_steps and \
                        (self.step % args.save_steps == 0 or last):
                    self.save_checkpoint()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{log[k]:.4f}" for k in ("loss", "eval_loss") if k in log})
        finally:
            if bar is not None:
                bar.close()
            if hasattr(self.model, "eval"):
                self.model.eval()
        return self.history

    # ------------------------------------------------------------ checkpoints
    def _fingerprint(self) -> dict:
        """What a checkpoint must share with this run to be resumed exactly."""
        cfg = self.model.config
        return {"args": dataclasses.asdict(self.args) | {"max_steps": None, "eval_steps": None,
                                                           "save_steps": None, "save_total_limit": None},
                "model": dataclasses.asdict(cfg),
                "tensors": {k: list(v.shape) for k, v in self.params.items()},
                "dtype": str(next(iter(self.params.values())).dtype)}

    def checkpoints(self) -> list[Path]:
        if self.output_dir is None or not self.output_dir.is_dir():
            return []
        found = [p for p in self.output_dir.glob("checkpoint-*") if (p / STATE_NAME).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self) -> Path:
        """output_dir/checkpoint-<step>/: the trained tensors, AdamW's moments, the state
        (written to a temp folder that is swapped in: a killed save leaves no half checkpoint)."""
        from safetensors.numpy import save_file

        from ..io.checkpoint import atomic_folder, usual_permissions
        dst = self.output_dir / f"checkpoint-{self.step}"
        with atomic_folder(dst) as tmp:
            opt = self.optimizer.state_dict()
            tensors = {f"param/{k}": np.ascontiguousarray(v) for k, v in self.params.items()}
            tensors.update({f"exp_avg/{k}": v for k, v in opt["exp_avg"].items()})
            tensors.update({f"exp_avg_sq/{k}": v for k, v in opt["exp_avg_sq"].items()})
            save_file(tensors, str(tmp / TENSORS_NAME))
            meta = {k: v for k, v in opt.items() if k not in ("exp_avg", "exp_avg_sq")}
            state = {"step": self.step, "optimizer": meta, "history": self.history,
                     "fingerprint": self._fingerprint()}
            (tmp / STATE_NAME).write_text(json.dumps(state, indent=1) + "\n")
            if hasattr(self.model, "save_pretrained") and hasattr(self.model, "peft_config"):
                self.model.save_pretrained(tmp / "adapter", selected_adapters=[self.model.active_adapter])
            usual_permissions(tmp)
        for old in self.checkpoints()[:-self.args.save_total_limit]:
            # hidden first (one rename), then deleted: never a half-deleted checkpoint-N
            hidden = Path(tempfile.mkdtemp(prefix=f".{old.name}.deleting.", dir=self.output_dir))
            hidden.rmdir()
            os.replace(old, hidden)
            shutil.rmtree(hidden, ignore_errors=True)
        return dst

    def load_checkpoint(self, path) -> None:
        """Restore tensors, AdamW and the step; refuse a checkpoint of another run."""
        from ..io.checkpoint import _read_safetensors
        path = Path(path)
        if not (path / STATE_NAME).is_file():
            raise WeightsNotFoundError(f"{path} is not a training checkpoint (no {STATE_NAME}).")
        state = json.loads((path / STATE_NAME).read_text())
        mine, theirs = self._fingerprint(), state.get("fingerprint", {})
        for part in ("model", "tensors", "dtype", "args"):
            if mine[part] != theirs.get(part):
                diff = part
                if part in ("args", "model"):
                    diff = ", ".join(f"{k}: checkpoint {theirs.get(part, {}).get(k)!r} vs now {v!r}"
                                     for k, v in mine[part].items()
                                     if theirs.get(part, {}).get(k) != v)
                raise ConfigError(f"cannot resume from {path}: it was made by another run "
                                  f"({diff}). Resume with the same settings, or start afresh.")
        tensors = _read_safetensors(path / TENSORS_NAME)
        for k, v in self.params.items():
            v[...] = tensors[f"param/{k}"]
        self.optimizer.load_state_dict({
            **state["optimizer"],
            "exp_avg": {k: tensors[f"exp_avg/{k}"] for k in self.params},
            "exp_avg_sq": {k: tensors[f"exp_avg_sq/{k}"] for k in self.params}})
        self.step, self.history = state["step"], state["history"]
