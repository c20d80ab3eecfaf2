"""The training loop: resume is bit for bit, NaN stops with the step, checkpoints are
refused by another run, eval reports loss and perplexity. (Equality with torch's
AdamW + schedule + clipping + accumulation is in test_optim.py.)"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from minipeft import GPT2, ConfigError, GPT2Config, LoraConfig, get_peft_model
from minipeft.train.pretrain import init_params
from minipeft.train.trainer import Trainer, TrainingArguments, TrainingError, evaluate, example_batches

CFG = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=31)


def encoded_data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, 30, size=rng.integers(5, 12))
        labels = ids.copy()
        labels[: len(ids) // 2] = -100                   # prompt tokens
        out.append((ids, labels))
    return out


def lora_model(dropout=0.2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(GPT2(CFG, init_params(CFG, seed=1)),
                              LoraConfig(r=2, target_modules="all-linear", lora_dropout=dropout))


def make_trainer(model, out=None, steps=6, **kw):
    args = TrainingArguments(learning_rate=1e-2, max_steps=steps, gradient_accumulation_steps=2,
                             warmup_steps=2, lr_scheduler_type="cosine", weight_decay=0.1,
                             max_grad_norm=0.5, save_steps=kw.pop("save_steps", 2), eval_steps=3, seed=3,
                             **kw)
    data = encoded_data()
    from minipeft.train.data import batches
    return Trainer(model, args, example_batches(data, 4, seed=3, accumulation=2),
                   eval_batches=batches(encoded_data(4, seed=9), 4, 0, 0), output_dir=out, progress=False)


@pytest.mark.parametrize("which", ["lora-dropout", "full"])
def test_resume_continues_bit_for_bit(tmp_path, which):
    def model():
        return lora_model() if which == "lora-dropout" else GPT2(CFG, init_params(CFG, seed=1))
    straight = make_trainer(model(), tmp_path / "a")
    straight.train()
    interrupted = make_trainer(model(), tmp_path / "b")
    batches_for_step = interrupted.batches_for_step

    def interrupt_at_5(step):
        if step == 4:
            raise KeyboardInterrupt                       # Ctrl-C during step 5
        return batches_for_step(step)
    interrupted.batches_for_step = interrupt_at_5
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()                               # checkpoint-4 was written before
    resumed = make_trainer(model(), tmp_path / "b")
    resumed.train(resume_from_checkpoint=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for k, v in straight.params.items():
        assert np.array_equal(resumed.params[k], v), k
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoint-4", "checkpoint-6"]


def test_dropout_and_training_change_the_loss():
    t = make_trainer(lora_model(), steps=8)
    history = t.train()
    assert history[-1]["loss"] < history[0]["loss"]
    assert "eval_loss" in history[2] and math.isclose(history[2]["eval_perplexity"],
                                                     math.exp(history[2]["eval_loss"]))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    t = make_trainer(lora_model(), tmp_path, steps=6)
    t.args.max_steps = 4
    t.train()
    good = {k: v.copy() for k, v in t.params.items()}
    t.args.max_steps = 6
    name = next(k for k in t.params if "lora_B" in k)
    original = t.model.loss_and_grads

    def poisoned(*a, **k):
        loss, grads = original(*a, **k)
        return float("nan"), grads
    t.model.loss_and_grads = poisoned
    with pytest.raises(TrainingError, match=r"step 5: the loss is nan.*checkpoint-4"):
        t.train()
    assert np.array_equal(t.params[name], good[name])     # not updated
    assert (tmp_path / "checkpoint-4").is_dir() and not (tmp_path / "checkpoint-5").exists()


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    make_trainer(lora_model(), tmp_path, steps=2).train()
    other = make_trainer(lora_model(), tmp_path, steps=4)
    other.args.learning_rate = 5e-3
    with pytest.raises(ConfigError, match="learning_rate: checkpoint 0.01 vs now 0.005"):
        other.train(resume_from_checkpoint=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wider = get_peft_model(GPT2(CFG, init_params(CFG, seed=1)),
                               LoraConfig(r=3, target_modules="all-linear", lora_dropout=0.2))
    with pytest.raises(ConfigError, match="another run"):
        make_trainer(wider, tmp_path, steps=4).train(resume_from_checkpoint=True)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="max_steps"):
        TrainingArguments(max_steps=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainingArguments(learning_rate=float("nan"))
    with pytest.raises(ConfigError):
        TrainingArguments(lr_scheduler_type="exponential")
    with pytest.raises(ConfigError, match="no token to predict"):
        evaluate(lora_model(), [(np.array([[1, 2]]), np.array([[-100, -100]]), None)])


def test_a_failed_checkpoint_save_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """The step-4 checkpoint's save fails half-way (a full disk): the tree is as the
    step-2 checkpoint left it, the error is a SaveError (an OSError too), and a resume
    continues from checkpoint-2."""
    import safetensors.numpy

    from minipeft.errors import SaveError
    real_save = safetensors.numpy.save_file

    def second_fails(tensors, path, metadata=None):
        if ".checkpoint-4." not in str(path):            # checkpoint-2 (its temp folder): whole
            return real_save(tensors, path, metadata=metadata)
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")
    t = make_trainer(lora_model(), tmp_path, steps=4)
    snapshot = []
    original = t.save_checkpoint

    def save_and_snapshot():
        out = original()
        snapshot[:] = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        return out
    t.save_checkpoint = save_and_snapshot
    monkeypatch.setattr(safetensors.numpy, "save_file", second_fails)
    with pytest.raises(SaveError, match="disk is full") as info:
        t.train()
    assert isinstance(info.value, OSError)
    assert snapshot and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == snapshot
    monkeypatch.undo()
    resumed = make_trainer(lora_model(), tmp_path, steps=4)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.step == 4
