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

Checkpoints (``output_dir/checkpoint-<step>/``) belong to one run: each records the
run's id and a fingerprint of everything that decides what is trained (the arguments,
every field of the adapter's config, the base model's weights, the dtype, the data of
the next step). Resume refuses a checkpoint whose fingerprint differs, naming the field;
a fresh run refuses a folder holding another run's checkpoints unless told to replace
them (``overwrite_output_dir``), and prunes only its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import safetensors.numpy  # save_file read at each save, so a test can make it fail
from tqdm.auto import tqdm

from ..config import refuse_unknown_fields
from ..errors import CheckpointError, ConfigError, MinipeftError, WeightsNotFoundError
from ..io.atomic import atomic_folder, usual_permissions
from ..io.jsonfile import parse_json, read_json
from ..io.tensors import read_safetensors
from .data import batches
from .optim import AdamW, clip_grad_norm, lr_multiplier

STATE_NAME = "trainer_state.json"
TENSORS_NAME = "training_tensors.safetensors"
CHECKPOINT_RE = re.compile(r"checkpoint-(0|[1-9][0-9]{0,17})")    # checkpoint-<step>, nothing else


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
    overwrite_output_dir: bool = False         # a fresh run replaces another run's checkpoints

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
        if not isinstance(self.overwrite_output_dir, bool):
            raise ConfigError(f"overwrite_output_dir must be True or False, got "
                              f"{self.overwrite_output_dir!r}.")
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
        self.run_id = secrets.token_hex(8)      # whose checkpoints are whose in output_dir
        self._base_hash = None                  # see _base_fingerprint

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
        elif self.step == 0:
            self._claim_output_dir()
        args = self.args
        bar = None
        if self.progress:
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
    # Arguments that do not change what is trained (how often to eval and save, …), and
    # max_steps: a run may be resumed to train longer (`--steps 6 --resume` after 4 steps);
    # linear and cosine decay then follow the longer run from the resumed step on.
    _NOT_TRAINING = ("eval_steps", "save_steps", "save_total_limit", "overwrite_output_dir",
                     "max_steps")
    # Adapter config fields that do not change what is trained (bookkeeping for peft).
    _NOT_MATH = ("inference_mode", "base_model_name_or_path", "revision", "peft_version",
                 "auto_mapping", "task_type", "tokenizer_name_or_path", "tokenizer_kwargs")

    def _base_fingerprint(self) -> str:
        """sha256 of the frozen weights (names, shapes, dtypes, bytes): the base model's
        identity. Computed once per Trainer (it is frozen)."""
        if self._base_hash is None:
            trained = {id(a) for a in self.params.values()}
            h = hashlib.sha256()
            for k in sorted(self.model.params):
                a = self.model.params[k]
                if id(a) in trained:
                    continue
                a = np.ascontiguousarray(a)
                h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
                h.update(memoryview(a).cast("B"))
            self._base_hash = h.hexdigest()
        return self._base_hash

    def _data_fingerprint(self) -> str | None:
        """sha256 of the micro-batches of the last step trained (the data, the batch size
        and the shuffling seed, all in one); None before the first step."""
        if self.step == 0:
            return None
        try:                                # batches_for_step is a function of the step
            return _hash_batches(self.batches_for_step(self.step - 1))
        except Exception:                   # noqa: BLE001 - then batches_for_step cannot say
            return None

    def _fingerprint(self) -> dict:
        """What a checkpoint must share with this run to be resumed exactly: every
        setting that changes what is trained (compared field by field on resume)."""
        args = dataclasses.asdict(self.args)
        for k in self._NOT_TRAINING:
            args.pop(k, None)
        peft = None
        if hasattr(self.model, "peft_config") and hasattr(self.model, "active_adapter"):
            config = self.model.peft_config[self.model.active_adapter]
            peft = {k: v for k, v in config.to_dict().items() if k not in self._NOT_MATH}
            peft["method"] = type(self.model).__name__
        fp = {"args": args, "model": dataclasses.asdict(self.model.config), "peft": peft,
              "tensors": {k: list(v.shape) for k, v in self.params.items()},
              "dtype": str(next(iter(self.params.values())).dtype),
              "base_weights": self._base_fingerprint(),
              "data": self._data_fingerprint()}
        return parse_json(json.dumps(fp, sort_keys=True, default=_jsonable), "the fingerprint")  # as saved

    def checkpoints(self, run: str | None = None) -> list[Path]:
        """output_dir's checkpoint-<step> folders, oldest step first (of one run, with ``run``).
        Folders named otherwise, links, and folders without a state are not checkpoints."""
        if self.output_dir is None or not self.output_dir.is_dir():
            return []
        found = []
        for p in self.output_dir.iterdir():
            if CHECKPOINT_RE.fullmatch(p.name) and p.is_dir() and not p.is_symlink() \
                    and (p / STATE_NAME).is_file():
                if run is None or _run_of(p) == run:
                    found.append(p)
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def _claim_output_dir(self) -> None:
        """A fresh run: another run's checkpoints in output_dir would be pruned as "oldest"
        by this one, or picked by a later resume. Refuse them, or (overwrite_output_dir)
        remove them first."""
        others = [p for p in self.checkpoints() if _run_of(p) != self.run_id]
        if not others:
            return
        if not self.args.overwrite_output_dir:
            raise ConfigError(
                f"{self.output_dir} holds checkpoints of another run ({', '.join(p.name for p in others[:3])}"
                f"{' …' if len(others) > 3 else ''}). Continue that run with resume_from_checkpoint="
                "True (--resume), choose another output_dir, or pass overwrite_output_dir=True "
                "(--overwrite) to delete them and start afresh.")
        for old in others:
            _delete_folder(old)

    def save_checkpoint(self) -> Path:
        """output_dir/checkpoint-<step>/: the trained tensors, AdamW's moments, the state
        (written to a temp folder that is swapped in: a killed save leaves no half checkpoint).
        Then this run's oldest checkpoints beyond save_total_limit are deleted."""

        dst = self.output_dir / f"checkpoint-{self.step}"
        fingerprint = self._fingerprint()
        with atomic_folder(dst) as tmp:
            opt = self.optimizer.state_dict()
            tensors = {f"param/{k}": np.ascontiguousarray(v) for k, v in self.params.items()}
            tensors.update({f"exp_avg/{k}": v for k, v in opt["exp_avg"].items()})
            tensors.update({f"exp_avg_sq/{k}": v for k, v in opt["exp_avg_sq"].items()})
            safetensors.numpy.save_file(tensors, str(tmp / TENSORS_NAME))
            meta = {k: v for k, v in opt.items() if k not in ("exp_avg", "exp_avg_sq")}
            state = {"step": self.step, "run": self.run_id, "optimizer": meta,
                     "history": self.history, "fingerprint": fingerprint}
            (tmp / STATE_NAME).write_text(json.dumps(state, indent=1, default=_jsonable) + "\n")
            if hasattr(self.model, "save_pretrained") and hasattr(self.model, "peft_config"):
                self.model.save_pretrained(tmp / "adapter", selected_adapters=[self.model.active_adapter])
            usual_permissions(tmp)
        for old in self.checkpoints(run=self.run_id)[:-self.args.save_total_limit]:
            _delete_folder(old)
        return dst

    def load_checkpoint(self, path) -> None:
        """Restore tensors, AdamW and the step; refuse a checkpoint of another run, or one
        that is damaged (checked whole before anything is changed)."""
        path = Path(path)
        if not (path / STATE_NAME).is_file():
            raise WeightsNotFoundError(f"{path} is not a training checkpoint (no {STATE_NAME}).")
        fix = "The checkpoint is damaged: resume from an earlier checkpoint-<step>, or start afresh."
        state = read_json(path / STATE_NAME, error=CheckpointError, fix=fix)
        _check_state(state, path / STATE_NAME, fix)
        self._check_fingerprint(path, state["fingerprint"], state["step"])
        tensors = read_safetensors(path / TENSORS_NAME)
        for part in ("param", "exp_avg", "exp_avg_sq"):
            for k, v in self.params.items():
                t = tensors.get(f"{part}/{k}")
                if t is None or tuple(t.shape) != v.shape or t.dtype.kind != "f":
                    what = "is missing" if t is None else \
                        f"has shape {tuple(t.shape)} and dtype {t.dtype}, not {v.shape} {v.dtype}"
                    raise CheckpointError(f"{path / TENSORS_NAME}: tensor {part}/{k} {what}. {fix}")
        try:
            self.optimizer.load_state_dict({
                **state["optimizer"],
                "exp_avg": {k: tensors[f"exp_avg/{k}"] for k in self.params},
                "exp_avg_sq": {k: tensors[f"exp_avg_sq/{k}"] for k in self.params}})
        except (ConfigError, TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path / STATE_NAME}: its optimizer state cannot be used "
                                  f"({e}). {fix}") from None
        for k, v in self.params.items():
            v[...] = tensors[f"param/{k}"]
        self.step, self.history = state["step"], state["history"]
        self.run_id = state.get("run") or self.run_id

    def _check_fingerprint(self, path: Path, theirs: dict, step: int) -> None:
        """Refuse a checkpoint made with other settings, naming each field that differs."""
        saved_step, self.step = self.step, step
        try:
            mine = self._fingerprint()
        finally:
            self.step = saved_step
        diffs = []
        for part, label in (("peft", None), ("model", None), ("args", None), ("dtype", "dtype"),
                            ("tensors", "trained tensors"), ("base_weights", "base model weights"),
                            ("data", f"training data (the batches of step {step})")):
            a, b = theirs.get(part, "(not recorded)"), mine[part]
            if part == "data" and (a is None or b is None):
                continue                            # batches_for_step could not say
            if a == b:
                continue
            if isinstance(a, dict) and isinstance(b, dict) and part != "tensors":
                diffs += [f"{k}: checkpoint {a.get(k, '(not set)')!r} vs now {b.get(k, '(not set)')!r}"
                          for k in sorted(set(a) | set(b)) if a.get(k, "(not set)") != b.get(k, "(not set)")]
            elif part == "tensors" and isinstance(a, dict):
                names = sorted(set(a) ^ set(b)) or [k for k in sorted(b) if a.get(k) != b[k]]
                diffs.append(f"{label}: they differ at {names[0]} (checkpoint "
                             f"{a.get(names[0], 'absent')} vs now {b.get(names[0], 'absent')})")
            elif part in ("base_weights", "data") and isinstance(a, str):
                diffs.append(f"{label}: checkpoint sha256 {a[:12]}… vs now {b[:12]}…")
            else:
                diffs.append(f"{label or part}: checkpoint {a!r} vs now {b!r}")
        if diffs:
            raise ConfigError(f"cannot resume from {path}: it was made by another run "
                              f"({'; '.join(diffs)}). Resume with the same settings, or start "
                              "afresh.")


def _jsonable(obj):
    """json.dumps' default: sets (target_modules) as sorted lists, anything else as str."""
    return sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else str(obj)


def _hash_batches(micro) -> str:
    """sha256 of a step's micro-batches (ids, labels, mask), dtypes and shapes included."""
    h = hashlib.sha256()
    for batch in micro:
        for a in batch:
            if a is None:
                h.update(b"None;")
                continue
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}:{a.shape};".encode())
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _run_of(checkpoint: Path) -> str | None:
    """The run id a checkpoint's state records (None if unreadable or absent)."""
    try:
        state = read_json(checkpoint / STATE_NAME)
    except MinipeftError:
        return None
    run = state.get("run")
    return run if isinstance(run, str) else None


def _delete_folder(folder: Path) -> None:
    """Hidden first (one rename), then deleted: never a half-deleted checkpoint-N."""
    hidden = Path(tempfile.mkdtemp(prefix=f".{folder.name}.deleting.", dir=folder.parent))
    hidden.rmdir()
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _check_state(state: dict, where: Path, fix: str) -> None:
    """trainer_state.json's form: each field there with its type, before any is used."""
    def need(ok, what):
        if not ok:
            raise CheckpointError(f"{where}: {what}. {fix}")
    step = state.get("step")
    need(isinstance(step, int) and not isinstance(step, bool) and step >= 0,
         f'"step" must be an integer >= 0, got {step!r}')
    need(isinstance(state.get("optimizer"), dict), '"optimizer" must be an object')
    history = state.get("history")
    need(isinstance(history, list) and all(isinstance(h, dict) for h in history),
         '"history" must be a list of objects')
    need(isinstance(state.get("fingerprint"), dict), '"fingerprint" must be an object (a '
         "checkpoint of an older minipeft has none: start afresh)")
    opt = state["optimizer"]
    for k in ("step", "lr", "eps", "weight_decay"):
        need(_is_number(opt.get(k)), f'"optimizer.{k}" must be a number, got {opt.get(k)!r}')
    betas = opt.get("betas")
    need(isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) for b in betas),
         f'"optimizer.betas" must be two numbers, got {betas!r}')
    for k, kind in (("param_step", dict), ("no_decay", list)):
        need(opt.get(k) is None or isinstance(opt.get(k), kind),
             f'"optimizer.{k}" must be {"an object" if kind is dict else "a list"}')
    need(all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
             for v in (opt.get("param_step") or {}).values()),
         '"optimizer.param_step" must map names to integers >= 0')
