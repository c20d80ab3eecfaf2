"""Pretraining a small GPT-2 from scratch on a text file: how the bundled model is made.

    minipeft pretrain DATA.txt weights/NAME --vocab-size 2048 --n-layer 4 ...

1. a byte-level BPE is trained on the text (GPT-2's scheme, a smaller vocabulary);
2. the text is tokenised; the last ``val_fraction`` of it is held out for validation;
3. a GPT-2 is initialised as GPT-2 is (normal(0, 0.02), residual projections scaled by
   1/√(2·n_layer), layernorm (1, 0), biases 0);
4. next-token training on random windows of ``block_size`` tokens with AdamW and a
   cosine schedule (the same Trainer the fine-tuning uses);
5. the model, the tokenizer, the loss figures and checksums are written to the folder.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import GPT2Config, refuse_unknown_fields
from ..errors import ConfigError, InputError
from ..io.checkpoint import expected_shapes, save_folder, sha256_file
from ..io.files import check_output_folder, read_text
from ..model.gpt2 import GPT2
from ..tokenizer import save_tokenizer, train_bpe_tokenizer
from .data import lm_windows
from .trainer import Trainer, TrainingArguments

INFO_NAME = "training_info.json"


def init_params(config: GPT2Config, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """GPT-2's initialisation (as transformers' GPT2PreTrainedModel._init_weights)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in expected_shapes(config).items():
        if ".ln_" in name:
            value = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
        elif name.endswith(".bias"):
            value = np.zeros(shape)
        else:
            std = 0.02
            if name.endswith("c_proj.weight"):               # residual projections (GPT-2 paper §2.3)
                std = 0.02 / math.sqrt(2 * config.n_layer)
            value = rng.normal(0.0, std, size=shape)
        params[name] = value.astype(dtype)
    return params


@refuse_unknown_fields
@dataclass
class PretrainConfig:
    """A pretraining run; the defaults made the bundled ``tiny-shakespeare`` model."""
    vocab_size: int = 2048
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    batch_size: int = 16
    steps: int = 1500
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for k, v in asdict(self).items():
            if k in ("learning_rate", "weight_decay", "val_fraction"):
                continue
            least = 0 if k in ("seed", "warmup_steps") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ConfigError(f"pretrain {k} must be an integer >= {least}, got {v!r}.")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}.")
        for k, least in (("learning_rate", "> 0"), ("weight_decay", ">= 0")):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or (v <= 0 if least == "> 0" else v < 0):
                raise ConfigError(f"pretrain {k} must be a number {least}, got {v!r}.")
        GPT2Config(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,   # checks n_embd % n_head
                   n_positions=self.block_size, vocab_size=self.vocab_size)


def pretrain(data_path, out, cfg: PretrainConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Train a tokenizer and a GPT-2 on the text at ``data_path``; write them to ``out``."""

    data_path, out = Path(data_path), check_output_folder(out, "pretrain's output folder")
    if not data_path.is_file():
        raise InputError(f"pretrain: no text file at {data_path}; give the path of a UTF-8 text "
                         "file to learn from.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; choose another folder or pass --overwrite.")
    text = read_text(data_path, what="text file to pretrain on")
    if len(text) < 10 * cfg.block_size:
        raise InputError(f"{data_path} holds {len(text)} characters: too little to pretrain on.")
    start = time.perf_counter()
    tok = train_bpe_tokenizer(text, cfg.vocab_size)
    ids = np.array(tok.encode(text).ids, dtype=np.int64)
    n_val = int(len(ids) * cfg.val_fraction)
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    config = GPT2Config(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                        n_positions=cfg.block_size, vocab_size=cfg.vocab_size)
    model = GPT2(config, init_params(config, cfg.seed))
    args = TrainingArguments(learning_rate=cfg.learning_rate, max_steps=cfg.steps,
                             warmup_steps=cfg.warmup_steps, lr_scheduler_type="cosine",
                             weight_decay=cfg.weight_decay, max_grad_norm=1.0,
                             eval_steps=max(1, cfg.steps // 10), seed=cfg.seed)
    val_batches = [(x, y, None) for x, y in
                   (lm_windows(val_ids, cfg.block_size, cfg.batch_size, cfg.seed + 1, k) for k in range(8))]
    trainer = Trainer(model, args, lambda step: [(*lm_windows(train_ids, cfg.block_size, cfg.batch_size,
                                                                cfg.seed, step), None)],
                      eval_batches=val_batches, progress=progress)
    history = trainer.train()
    seconds = time.perf_counter() - start
    last = history[-1]
    info = {"data": data_path.name, "data_sha256": sha256_file(data_path), "config": asdict(cfg),
            "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)),
            "final_train_loss": round(float(np.mean([h["loss"] for h in history[-20:]])), 4),
            "final_val_loss": round(last["eval_loss"], 4), "seconds": round(seconds, 1),
            "parameters": int(model.num_parameters())}
    with tempfile.TemporaryDirectory() as tmp:          # everything lands in one atomic save
        save_tokenizer(tok, tmp)
        (Path(tmp) / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
        save_folder(out, config, model.params, overwrite=overwrite, checksums=True,
                    extra_files=(Path(tmp) / "tokenizer.json", Path(tmp) / INFO_NAME))
    return info
