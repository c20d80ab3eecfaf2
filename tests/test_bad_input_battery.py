"""The bad-input battery: one table of wrong things a user can do, across the public surface.

Each case is (id, trigger, error, pattern). ``trigger(tmp)`` does one wrong thing (``tmp`` is
a fresh folder); it must raise ``error`` — a MinipeftError subclass — whose message matches
``pattern`` (searched with re.S), which names both what is wrong and what to do. CLI cases
run ``minipeft.cli.main`` and raise ``CliFailed`` with its stderr: the command must exit
non-zero, print ``minipeft <cmd>: error: <message>`` and no traceback. argparse's own type
errors (exit 2, after the usage line) count too.

The models are tiny (1 layer, C=8, 20 tokens) and built in memory; the CLI cases use the
bundled tiny-shakespeare. The whole table runs in a few seconds.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import pickle
import re
import warnings
from typing import Callable, NamedTuple

import numpy as np
import pytest
from safetensors.numpy import save_file

from minipeft import (
    GPT2,
    BottleneckConfig,
    CheckpointError,
    ConfigError,
    GPT2Config,
    IA3Config,
    InputError,
    LoraConfig,
    MinipeftError,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    WeightsNotFoundError,
    convert_checkpoint,
    get_peft_model,
    load_tokenizer,
)
from minipeft.cli import main
from minipeft.demo import DemoConfig
from minipeft.io.paths import bundled_dir
from minipeft.train.data import encode_examples, read_jsonl
from minipeft.train.pretrain import PretrainConfig, init_params
from minipeft.train.trainer import Trainer, TrainingArguments, example_batches

BUNDLED = "tiny-shakespeare"
CFG = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=20)
V, P = CFG.vocab_size, CFG.n_positions
IDS = np.array([[1, 2, 3], [4, 5, 6]])


def tiny(seed=0, **change) -> GPT2:
    """A GPT2 of CFG (with ``change``), random weights, in memory."""
    cfg = GPT2Config(**{**CFG.to_dict(), **change})
    return GPT2(cfg, init_params(cfg, seed))


def lora(model=None, **config) -> PeftModel:
    return get_peft_model(model or tiny(), LoraConfig(fan_in_fan_out=True, **config))


G = tiny()                                     # shared by the cases that only read it
PM = lora(r=2, target_modules="all-linear")


@functools.cache
def tokenizer():
    return load_tokenizer(BUNDLED)


# ------------------------------------------------------------------ folders to break
def saved(tmp, model=None):
    """A model folder (config.json + model.safetensors) written by save_pretrained."""
    return (model or G).save_pretrained(tmp / "m")


def rewrite_config(folder, **change):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    return folder


def with_tensors(tmp, **tensors):
    """A saved folder whose model.safetensors holds G's tensors with ``tensors`` replaced."""
    folder = saved(tmp)
    params = {k: v for k, v in G.params.items()}
    params.update({k.replace("__", "."): v for k, v in tensors.items()})
    save_file(params, str(folder / "model.safetensors"))
    return folder


def damaged(tmp, name="model.safetensors", data=b""):
    folder = saved(tmp)
    (folder / name).write_bytes(data(folder / name) if callable(data) else data)
    return folder


def adapter(tmp, model=None, **config):
    """An adapter folder (adapter_config.json + adapter_model.safetensors) of a LoRA on model."""
    return lora(model, **config).save_pretrained(tmp / "a")


def adapter_with_config(tmp, **change):
    folder = adapter(tmp)
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    return folder


def jsonl(tmp, text, name="data.jsonl"):
    (tmp / name).write_text(text, encoding="utf-8")
    return tmp / name


GOOD_LINE = '{"prompt": "name[The Eagle] | food[French]\\nSentence:", "completion": " The Eagle."}\n'
PICKLE = pickle.dumps({"transformer.wte.weight": [[0.0] * 8] * 20}, protocol=4)


# ------------------------------------------------------------------ the CLI
class CliFailed(Exception):
    """The command exited non-zero; str() is its stderr."""

    def __init__(self, command, code, stderr):
        super().__init__(stderr)
        self.command, self.code, self.stderr = command, code, stderr


def cli(*argv):
    """Run ``minipeft argv...``; raise CliFailed with its stderr when it exits non-zero."""
    argv = [str(a) for a in argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:                 # argparse's usage errors
            code = e.code
    if code:
        raise CliFailed(argv[0], code, err.getvalue())


def finetune(tmp, *flags, data=None, out=None):
    data = data or jsonl(tmp, GOOD_LINE * 4)
    cli("finetune", BUNDLED, data, out or tmp / "run", "--steps", 1, "--no-progress", *flags)


def nonempty(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return tmp / "out"


def trainer(model, tmp=None, **args):
    data = [(np.array([1, 2, 3]), np.array([-100, 2, 3]))]
    return Trainer(model, TrainingArguments(**args), example_batches(data, 1, 0), progress=False,
                   output_dir=tmp)


# ------------------------------------------------------------------ the table
class Case(NamedTuple):
    id: str
    trigger: Callable
    error: type
    pattern: str


C = Case
CASES = [
    # --- model inputs: GPT2 and PeftModel, __call__ / loss_and_grads / generate
    C("gpt2-call-id-too-large", lambda t: G([[1, V]]), InputError,
      r"input_ids holds 20, outside this model's vocabulary 0\.\.19.*another tokenizer"),
    C("peft-call-id-negative", lambda t: PM([[-1, 2]]), InputError,
      r"input_ids holds -1, outside.*another tokenizer"),
    C("gpt2-loss-float-ids", lambda t: G.loss_and_grads([[1.0, 2.0]], [[1, 2]]), InputError,
      r"input_ids must hold integers, got dtype float64.*astype\(np\.int64\)"),
    C("peft-generate-bool-ids", lambda t: PM.generate(np.array([[True, False]]), 2), InputError,
      r"must hold integers, got dtype bool.*tokenizer\.encode"),
    C("gpt2-call-1d-ids", lambda t: G([1, 2, 3]), InputError,
      r"must have shape \(B, T\), got 1 dimension.*wrap it: \[ids\]"),
    C("peft-loss-3d-ids", lambda t: PM.loss_and_grads(np.ones((1, 2, 2), int), IDS), InputError,
      r"input_ids must have shape \(B, T\), got 3 dimension"),
    C("gpt2-generate-zero-tokens", lambda t: G.generate(np.zeros((1, 0), int), 2), InputError,
      r"input_ids is empty \(shape \(1, 0\)\); give at least one token"),
    C("peft-call-zero-rows", lambda t: PM(np.zeros((0, 3), int)), InputError,
      r"input_ids is empty \(shape \(0, 3\)\); give at least one token"),
    C("gpt2-call-longer-than-n_positions", lambda t: G(np.ones((1, P + 1), int)), InputError,
      r"17 tokens long but this model has only n_positions=16.*truncate or split"),
    C("peft-loss-longer-than-n_positions",
      lambda t: PM.loss_and_grads(np.ones((1, P + 1), int), np.ones((1, P + 1), int)), InputError,
      r"17 tokens long .*n_positions=16.*truncate"),
    C("gpt2-call-ragged", lambda t: G([[1, 2, 3], [4]]), InputError,
      r"equal-length .*pad short rows"),
    C("peft-call-strings", lambda t: PM([["a", "b"]]), InputError,
      r"must hold integers.*tokenizer\.encode\(text\)\.ids"),
    C("gpt2-generate-a-string", lambda t: G.generate("Hello", 2), InputError,
      r"input_ids must hold integers.*tokenizer\.encode"),
    C("gpt2-mask-wrong-shape", lambda t: G(IDS, attention_mask=np.ones((2, 2))), InputError,
      r"attention_mask has shape \(2, 2\) but must match input_ids \(2, 3\).*0 for padding"),
    C("peft-loss-mask-not-0-1",
      lambda t: PM.loss_and_grads(IDS, IDS, attention_mask=[[1, 1, 2], [1, 1, 1]]), InputError,
      r"attention_mask must hold only 0 \(padding\) and 1 \(real token\)"),
    C("peft-generate-mask-row-all-zeros",
      lambda t: PM.generate(IDS, 2, attention_mask=[[0, 0, 0], [1, 1, 1]]), InputError,
      r"attention_mask row 0 is all 0.*no real token.*Mark its tokens with 1"),
    C("gpt2-labels-wrong-shape", lambda t: G.loss_and_grads(IDS, IDS[:, :2]), InputError,
      r"labels has shape \(2, 2\) but must match input_ids \(2, 3\).*-100 marks ignored"),
    C("peft-labels-out-of-range", lambda t: PM.loss_and_grads(IDS, [[1, 2, V], [4, 5, 6]]),
      InputError, r"labels holds 20: labels must be token ids in 0\.\.19 or -100"),
    C("gpt2-labels-all-ignored", lambda t: G.loss_and_grads(IDS, np.full_like(IDS, -100)),
      InputError, r"No token is left to predict.*Label at least one token after the first"),
    C("gpt2-backward-wrong-dlogits", lambda t: G.backward(np.zeros((1, 2, 3)), G.forward(IDS)[1]),
      InputError, r"dlogits has shape \(1, 2, 3\).*logits \(2, 3, 20\); pass the gradient"),
    C("gpt2-generate-too-many-tokens", lambda t: G.generate(IDS, P), InputError,
      r"max_new_tokens=16: 19 exceeds this model's n_positions=16\. Ask for at most 13"),
    C("peft-generate-negative-max-new-tokens", lambda t: PM.generate(IDS, -1), InputError,
      r"max_new_tokens must be an integer >= 0, got -1"),
    C("gpt2-generate-temperature-zero", lambda t: G.generate(IDS, 2, do_sample=True, temperature=0),
      ConfigError, r"temperature must be > 0 when sampling.*use do_sample=False"),
    C("peft-generate-temperature-nan",
      lambda t: PM.generate(IDS, 2, do_sample=True, temperature=float("nan")), ConfigError,
      r"temperature must be a finite number, got nan"),
    C("gpt2-generate-top-p-above-1", lambda t: G.generate(IDS, 2, do_sample=True, top_p=1.5),
      ConfigError, r"top_p must be in \(0, 1\] \(the probability mass to keep\) or None, got 1\.5"),
    C("peft-generate-top-k-zero", lambda t: PM.generate(IDS, 2, do_sample=True, top_k=0),
      ConfigError, r"top_k must be an integer >= 1 \(keep the k most likely tokens\)"),
    C("gpt2-generate-eos-out-of-range", lambda t: G.generate(IDS, 2, eos_token_id=V), ConfigError,
      r"eos_token_id must be a token id in 0\.\.19 or None, got 20"),
    C("gpt2-generate-bad-seed", lambda t: G.generate(IDS, 2, do_sample=True, seed="x"), ConfigError,
      r"seed must be an integer >= 0 or None, got 'x'"),
    C("gpt2-generate-do-sample-string", lambda t: G.generate(IDS, 2, do_sample="yes"), ConfigError,
      r"do_sample must be True \(sample\) or False \(greedy\), got 'yes'"),

    # --- configs
    C("gpt2config-n_head-not-dividing", lambda t: GPT2Config(n_embd=8, n_head=3), ConfigError,
      r"n_embd \(8\) must be divisible by n_head \(3\): each head gets n_embd / n_head"),
    C("gpt2config-zero-layers", lambda t: GPT2Config(n_layer=0), ConfigError,
      r"GPT2Config\.n_layer must be a positive integer, got 0"),
    C("gpt2config-negative-vocab", lambda t: GPT2Config(vocab_size=-5), ConfigError,
      r"GPT2Config\.vocab_size must be a positive integer, got -5"),
    C("gpt2config-eps-zero", lambda t: GPT2Config(layer_norm_epsilon=0.0), ConfigError,
      r"layer_norm_epsilon must be a number > 0, got 0\.0"),
    C("gpt2config-unknown-keyword", lambda t: GPT2Config(n_layers=2), ConfigError,
      r"GPT2Config has no field 'n_layers'\. Did you mean 'n_layer'\?"),
    C("gpt2config-dict-unknown-field", lambda t: GPT2Config.from_dict({"n_layer": 1, "heads": 2}),
      ConfigError, r"Unknown GPT-2 config field\(s\) \['heads'\]; the fields are"),
    C("gpt2config-hf-dict-not-gpt2", lambda t: GPT2Config.from_dict({"model_type": "llama"}),
      ConfigError, r"not a GPT-2 checkpoint: config\.json has model_type='llama'.*GPT-2 only"),
    C("gpt2-needs-a-config-object", lambda t: GPT2(CFG.to_dict(), G.params), ConfigError,
      r"GPT2 needs a GPT2Config, got dict; build one with GPT2Config"),
    C("gpt2-float16-params", lambda t: GPT2(CFG, {k: v.astype(np.float16) for k, v in G.params.items()}),
      ConfigError, r"float32 or all float64, got .*float16.*cast them"),
    C("lora-r-zero", lambda t: LoraConfig(r=0), ConfigError,
      r"LoraConfig r must be a positive integer \(the rank\), got 0"),
    C("lora-alpha-negative", lambda t: LoraConfig(lora_alpha=-1), ConfigError,
      r"lora_alpha must be a positive number, got -1"),
    C("lora-dropout-one", lambda t: LoraConfig(lora_dropout=1.0), ConfigError,
      r"lora_dropout must be in \[0, 1\), got 1\.0"),
    C("lora-bias-unknown", lambda t: LoraConfig(bias="some"), ConfigError,
      r"bias must be one of \('none', 'all', 'lora_only'\), got 'some'"),
    C("lora-init-unknown", lambda t: LoraConfig(init_lora_weights="xavier"), ConfigError,
      r"init_lora_weights must be one of .*'pissa'.*got 'xavier'"),
    C("lora-target-modules-empty-list", lambda t: LoraConfig(target_modules=[]), ConfigError,
      r"target_modules must be a non-empty list of module names.*'all-linear'"),
    C("lora-use-dora-not-bool", lambda t: LoraConfig(use_dora="yes"), ConfigError,
      r"use_dora must be True or False, got 'yes'"),
    C("lora-layers-negative", lambda t: LoraConfig(layers_to_transform=[-1]), ConfigError,
      r"layers_to_transform must be a layer index or a non-empty list of indices >= 0"),
    C("lora-layers-with-all-linear", lambda t: LoraConfig(target_modules="all-linear",
                                                          layers_to_transform=[0]), ConfigError,
      r"layers_to_transform cannot be used with a string target_modules.*list the modules"),
    C("lora-enable-lora-with-dora", lambda t: LoraConfig(enable_lora=[True, False, True],
                                                         use_dora=True), ConfigError,
      r"enable_lora \(q/k/v slices\) cannot be combined with use_dora"),
    C("lora-enable-lora-wrong-length", lambda t: LoraConfig(enable_lora=[True, False]), ConfigError,
      r"enable_lora must be three booleans for the q, k, v slices.*\[True, False, True\]"),
    C("lora-unknown-keyword", lambda t: LoraConfig(lora_droput=0.1), ConfigError,
      r"LoraConfig has no field 'lora_droput'\. Did you mean 'lora_dropout'\?.*Its fields: r, "
      r"lora_alpha"),
    C("lora-unknown-target", lambda t: lora(target_modules=["q_proj"]), ConfigError,
      r"target module 'q_proj' is not a linear layer of GPT-2\. Choose from 'c_attn'"),
    C("lora-regex-matches-nothing", lambda t: lora(target_modules=r".*\.q_proj"), ConfigError,
      r"regex '\.\*\\\\\.q_proj' matches no module; module names look like 'transformer\.h\.0"),
    C("lora-layer-that-does-not-exist", lambda t: lora(target_modules=["c_attn"],
                                                       layers_to_transform=[5]), ConfigError,
      r"layers_to_transform \[5\] do not exist: the model has layers 0 \.\. 0"),
    C("lora-enable-lora-without-c_attn",
      lambda t: lora(target_modules=["mlp.c_fc"], enable_lora=[True, False, True]), ConfigError,
      r"c_attn is not targeted: add 'c_attn' to target_modules"),
    C("get-peft-model-with-a-dict", lambda t: get_peft_model(tiny(), {"r": 8}), ConfigError,
      r"get_peft_model needs a PEFT config such as LoraConfig, got dict"),
    C("peft-set-unknown-adapter", lambda t: lora().set_adapter("other"), ConfigError,
      r"no adapter named 'other'; this model has \['default'\]"),
    C("training-args-max-steps-zero", lambda t: TrainingArguments(max_steps=0), ConfigError,
      r"max_steps must be an integer >= 1, got 0"),
    C("training-args-accumulation-zero", lambda t: TrainingArguments(gradient_accumulation_steps=0),
      ConfigError, r"gradient_accumulation_steps must be an integer >= 1, got 0"),
    C("training-args-warmup-negative", lambda t: TrainingArguments(warmup_steps=-1), ConfigError,
      r"warmup_steps must be an integer >= 0, got -1"),
    C("training-args-lr-nan", lambda t: TrainingArguments(learning_rate=float("nan")), ConfigError,
      r"learning_rate must be a positive number, got nan"),
    C("training-args-lr-bool", lambda t: TrainingArguments(learning_rate=True), ConfigError,
      r"learning_rate must be a positive number, got True"),
    C("training-args-schedule-unknown", lambda t: TrainingArguments(lr_scheduler_type="exp"),
      ConfigError, r"unknown lr schedule 'exp'; use one of constant, linear, cosine"),
    C("training-args-weight-decay-negative", lambda t: TrainingArguments(weight_decay=-0.1),
      ConfigError, r"weight_decay must be a number >= 0 \(0: no decay\), got -0\.1"),
    C("training-args-beta1-one", lambda t: TrainingArguments(adam_beta1=1.0), ConfigError,
      r"adam_beta1 must be a number in \[0, 1\), got 1\.0"),
    C("training-args-beta2-negative", lambda t: TrainingArguments(adam_beta2=-0.5), ConfigError,
      r"adam_beta2 must be a number in \[0, 1\), got -0\.5"),
    C("training-args-epsilon-zero", lambda t: TrainingArguments(adam_epsilon=0), ConfigError,
      r"adam_epsilon must be a number > 0 \(e\.g\. 1e-8\), got 0"),
    C("training-args-max-grad-norm-string", lambda t: TrainingArguments(max_grad_norm="1"),
      ConfigError, r"max_grad_norm must be positive or None, got '1'"),
    C("training-args-eval-steps-zero", lambda t: TrainingArguments(eval_steps=0), ConfigError,
      r"eval_steps must be None or an integer >= 1, got 0"),
    C("training-args-save-steps-negative", lambda t: TrainingArguments(save_steps=-5), ConfigError,
      r"save_steps must be None or an integer >= 1, got -5"),
    C("training-args-save-total-limit-zero", lambda t: TrainingArguments(save_total_limit=0),
      ConfigError, r"save_total_limit must be an integer >= 1, got 0"),
    C("training-args-seed-negative", lambda t: TrainingArguments(seed=-1), ConfigError,
      r"seed must be an integer >= 0, got -1"),
    C("training-args-unknown-keyword", lambda t: TrainingArguments(num_train_epochs=3), ConfigError,
      r"TrainingArguments has no field 'num_train_epochs'\..*Its fields: learning_rate, max_steps"),
    C("demo-config-steps-zero", lambda t: DemoConfig(steps=0), ConfigError,
      r"the demo's steps must be an integer >= 1, got 0"),
    C("demo-config-lr-negative", lambda t: DemoConfig(learning_rate=-1.0), ConfigError,
      r"the demo's learning_rate must be a number > 0, got -1\.0"),
    C("pretrain-config-n_head-not-dividing", lambda t: PretrainConfig(n_head=3), ConfigError,
      r"n_embd \(128\) must be divisible by n_head \(3\)"),
    C("pretrain-config-val-fraction", lambda t: PretrainConfig(val_fraction=0.7), ConfigError,
      r"val_fraction must be in \(0, 0\.5\), got 0\.7"),
    C("pretrain-config-lr-zero", lambda t: PretrainConfig(learning_rate=0), ConfigError,
      r"pretrain learning_rate must be a number > 0, got 0"),

    # --- files: model folders
    C("load-missing-folder", lambda t: GPT2.from_pretrained(t / "nowhere"), WeightsNotFoundError,
      r"No folder '.*nowhere' and no model of that name\. Give a GPT-2 folder.*bundled name"),
    C("load-unknown-name", lambda t: GPT2.from_pretrained("gpt-5"), WeightsNotFoundError,
      r"No folder 'gpt-5' and no model of that name.*tiny-shakespeare.*gpt2-medium"),
    C("load-not-a-path", lambda t: GPT2.from_pretrained(None), WeightsNotFoundError,
      r"A model is a folder path or a name \(a str\), got NoneType.*from_pretrained\('tiny"),
    C("load-empty-folder", lambda t: GPT2.from_pretrained((t / "e").mkdir() or t / "e"),
      WeightsNotFoundError, r"has no config\.json, so it is not a GPT-2 checkpoint folder\. "
      r"Give the folder that model\.save_pretrained"),
    C("load-a-file", lambda t: GPT2.from_pretrained(saved(t) / "model.safetensors"),
      WeightsNotFoundError, r"model\.safetensors is a file; give the folder that holds config\.json"),
    C("load-empty-config-json", lambda t: GPT2.from_pretrained(damaged(t, "config.json", b"")),
      ConfigError, r"config\.json is empty; it should hold a JSON object.*It should be a GPT-2 "
      r"config\.json.*save or convert the model again"),
    C("load-config-json-not-json",
      lambda t: GPT2.from_pretrained(damaged(t, "config.json", b"{n_layer: 1")),
      ConfigError, r"config\.json is not valid JSON: Expecting property name.*save or convert"),
    C("load-no-weights-file", lambda t: GPT2.from_pretrained(
        (saved(t) / "model.safetensors").unlink() or t / "m"), WeightsNotFoundError,
      r"has no weights: expected model\.safetensors .*beside config\.json"),
    C("load-empty-safetensors", lambda t: GPT2.from_pretrained(damaged(t)), CheckpointError,
      r"Cannot read .*model\.safetensors.*corrupt, truncated or not safetensors; convert or "
      r"download it again"),
    C("load-truncated-safetensors",
      lambda t: GPT2.from_pretrained(damaged(t, data=lambda p: p.read_bytes()[:-50])),
      CheckpointError, r"model\.safetensors.*corrupt, truncated.*download it again"),
    C("load-text-as-safetensors", lambda t: convert_checkpoint(
        damaged(t, data=b"these are not weights\n" * 4), t / "out"), CheckpointError,
      r"Cannot read .*model\.safetensors.*not safetensors"),
    C("load-pickle-as-safetensors", lambda t: GPT2.from_pretrained(damaged(t, data=PICKLE)),
      CheckpointError, r"model\.safetensors.*looks like a pickle.*never loads.*safe_serialization=True"),
    C("load-int-tensor", lambda t: GPT2.from_pretrained(
        with_tensors(t, transformer__wte__weight=np.ones((V, 8), np.int32))), CheckpointError,
      r"tensor transformer\.wte\.weight has dtype int32; GPT-2 weights are floats.*download "
      r"the original folder again"),
    C("load-wrong-shape-tensor", lambda t: GPT2.from_pretrained(
        with_tensors(t, transformer__wpe__weight=np.zeros((P - 1, 8), np.float32))), CheckpointError,
      r"transformer\.wpe\.weight has shape \(15, 8\), but config\.json .*needs \(16, 8\)\. "
      r"The weights and config do not match"),
    C("load-checkpoint-of-another-size", lambda t: GPT2.from_pretrained(
        rewrite_config(saved(t), n_embd=16)), CheckpointError,
      r"has shape \(20, 8\), but config\.json \(n_embd=16.*needs \(20, 16\)"),
    C("load-config-with-another-n_layer", lambda t: GPT2.from_pretrained(
        rewrite_config(saved(t), n_layer=2)), CheckpointError,
      r"missing 12 tensor\(s\) that a GPT-2 with n_layer=2 needs.*convert the original folder again"),
    C("load-checksum-mismatch", lambda t: GPT2.from_pretrained(damaged(
        t, "checksums.json", json.dumps({"model.safetensors": "0" * 64}).encode())), CheckpointError,
      r"model\.safetensors does not match its checksum in checksums\.json.*Restore it"),
    C("tokenizer-missing-path", lambda t: load_tokenizer(t / "nowhere"), WeightsNotFoundError,
      r"Tokenizer path '.*nowhere' does not exist and is not a bundled model name\. Check the "
      r"path, or pass a folder holding vocab\.json \+ merges\.txt"),
    C("tokenizer-folder-without-files", lambda t: load_tokenizer(saved(t)), WeightsNotFoundError,
      r"No tokenizer files in .*m: looked for tokenizer\.json.*Copy GPT-2's tokenizer files"),
    C("convert-into-itself", lambda t: convert_checkpoint(saved(t), t / "m"), MinipeftError,
      r"convert would write .* over its own source; choose another output folder"),
    C("save-over-a-nonempty-folder", lambda t: G.save_pretrained(nonempty(t)), MinipeftError,
      r"already exists and is not empty.*pass overwrite=True \(--overwrite on the CLI\)"),

    # --- files: adapters
    C("adapter-for-another-n_embd", lambda t: PeftModel.from_pretrained(
        tiny(n_embd=16), adapter(t)), CheckpointError,
      r"lora_A\.weight has shape \(8, 8\), this model needs \(8, 16\): the adapter was saved for "
      r"another model size \(this one has n_embd=16\)"),
    C("adapter-for-another-n_layer", lambda t: PeftModel.from_pretrained(
        tiny(), adapter(t, tiny(n_layer=2))), CheckpointError,
      r"does not fit this model and config: missing \[\], unexpected .*h\.1.*saved for another "
      r"model \(this one has n_layer=1\)"),
    C("adapter-of-another-method", lambda t: LoraConfig.from_dict(
        {"peft_type": "IA3"}, source="adapter_config.json"), ConfigError,
      r"adapter_config\.json is a IA3 adapter, not LORA; load it with PeftModel\.from_pretrained, "
      r"which picks the method from peft_type"),
    C("adapter-unknown-peft-type", lambda t: PeftModel.from_pretrained(
        tiny(), adapter_with_config(t, peft_type="MYSTERY")), ConfigError,
      r"has peft_type .MYSTERY., which minipeft does not implement; it reads .*LORA"),
    C("adapter-option-minipeft-lacks", lambda t: PeftModel.from_pretrained(
        tiny(), adapter_with_config(t, rank_pattern={"c_attn": 4})), ConfigError,
      r"uses LORA options minipeft cannot honour: rank_pattern="),
    C("adapter-unknown-field", lambda t: PeftModel.from_pretrained(
        tiny(), adapter_with_config(t, magic=1)), ConfigError,
      r"magic=1 \(unknown to minipeft\)\. Use plain LoRA"),
    C("adapter-missing-folder", lambda t: PeftModel.from_pretrained(tiny(), t / "nowhere"),
      WeightsNotFoundError, r"No adapter_config\.json in .*nowhere: give the folder that "
      r"save_pretrained"),
    C("adapter-config-not-json", lambda t: PeftModel.from_pretrained(
        tiny(), damaged_adapter(t, "adapter_config.json", b"{oops")), CheckpointError,
      r"adapter_config\.json is not valid JSON.*[Ss]ave the adapter again"),
    C("adapter-weights-missing", lambda t: PeftModel.from_pretrained(
        tiny(), damaged_adapter(t, "adapter_model.safetensors", None)), WeightsNotFoundError,
      r"No adapter_model\.safetensors in .*Give the folder that save_pretrained wrote"),
    C("adapter-pickle-as-safetensors", lambda t: PeftModel.from_pretrained(
        tiny(), damaged_adapter(t, "adapter_model.safetensors", PICKLE)), CheckpointError,
      r"adapter_model\.safetensors.*looks like a pickle.*safe_serialization=True"),

    # --- training data
    C("data-malformed-line", lambda t: read_jsonl(jsonl(t, GOOD_LINE + '{"prompt": "a",\n')),
      InputError, r"data\.jsonl, line 2 is not valid JSON.*Each line must be one JSON object like"),
    C("data-empty-file", lambda t: read_jsonl(jsonl(t, "")), InputError,
      r"is empty: no examples to train on\. Write one \{\"prompt\""),
    C("data-no-completion", lambda t: read_jsonl(jsonl(t, '{"prompt": "only a prompt"}\n')),
      InputError, r"line 1: no 'completion' field \(keys: \['prompt'\]\); every example needs both"),
    C("data-empty-completion", lambda t: read_jsonl(jsonl(t, '{"prompt": "a", "completion": ""}\n')),
      InputError, r"line 1: 'completion' is empty.*give the text the model should write"),
    C("data-non-string-field",
      lambda t: read_jsonl(jsonl(t, GOOD_LINE + '{"prompt": 3, "completion": " b"}\n')),
      InputError, r"line 2: 'prompt' is a number; it must be a string"),
    C("data-line-not-an-object", lambda t: read_jsonl(jsonl(t, '["a", "b"]\n')), InputError,
      r"line 1 must hold a JSON object .*got a JSON array.*Each line must be one JSON object like"),
    C("data-missing-file", lambda t: read_jsonl(t / "none.jsonl"), InputError,
      r"none\.jsonl does not exist; expected a JSONL file\. Pass a JSONL file with one"),
    C("data-too-long-without-truncate", lambda t: encode_examples(
        [{"prompt": "word " * 40, "completion": " ok"}], tokenizer(), 16, 0), InputError,
      r"example 0 is \d+ tokens .*more than max_length=16; raise max_length or pass truncate=True"),
    C("data-max-length-too-small", lambda t: encode_examples(
        [{"prompt": "a", "completion": " b"}], tokenizer(), 1, 0), ConfigError,
      r"max_length=1: it must be an integer >= 2"),
    C("data-batch-size-zero", lambda t: example_batches([(np.array([1, 2]), np.array([1, 2]))], 0, 0),
      ConfigError, r"batch_size must be an integer >= 1, got 0"),
    C("trainer-inference-only-adapter", lambda t: trainer(PeftModel.from_pretrained(
        tiny(), adapter(t))), ConfigError,
      r"the model has nothing to train.*load it with is_trainable=True"),
    C("trainer-resume-without-checkpoint", lambda t: trainer(lora(), t / "run", max_steps=1).train(
        resume_from_checkpoint=True), WeightsNotFoundError,
      r"no checkpoint to resume from in .*run; start afresh"),

    # --- the command line
    C("cli-finetune-missing-data", lambda t: finetune(t, data=t / "none.jsonl"), CliFailed,
      r"none\.jsonl does not exist; expected a JSONL file\. Pass a JSONL file"),
    C("cli-finetune-negative-steps", lambda t: finetune(t, "--steps", -3), CliFailed,
      r"--steps must be >= 1, got -3"),
    C("cli-finetune-r-zero", lambda t: finetune(t, "--r", 0), CliFailed, r"--r must be >= 1, got 0"),
    C("cli-finetune-lr-zero", lambda t: finetune(t, "--lr", 0), CliFailed,
      r"--lr must be > 0, got 0\.0"),
    C("cli-finetune-dropout-one", lambda t: finetune(t, "--lora-dropout", 1), CliFailed,
      r"lora_dropout must be in \[0, 1\), got 1\.0"),
    C("cli-finetune-unknown-target", lambda t: finetune(t, "--target-modules", "q_proj,v_proj"),
      CliFailed, r"target module 'q_proj' is not a linear layer of GPT-2\. Choose from"),
    C("cli-finetune-output-exists", lambda t: finetune(t, out=nonempty(t)), CliFailed,
      r"exists and is not empty; choose another folder, pass --resume .* or --overwrite"),
    C("cli-finetune-resume-nothing", lambda t: finetune(t, "--resume"), CliFailed,
      r"no checkpoint to resume from in .*run; start afresh"),
    C("cli-finetune-steps-not-a-number", lambda t: finetune(t, "--steps", "many"), CliFailed,
      r"argument --steps: invalid int value: 'many'"),
    C("cli-finetune-unknown-schedule", lambda t: finetune(t, "--schedule", "exp"), CliFailed,
      r"argument --schedule: invalid choice: 'exp' \(choose from"),
    C("cli-generate-bad-top-p", lambda t: cli("generate", BUNDLED, "To be", "--do-sample",
                                              "--top-p", 1.5), CliFailed,
      r"top_p must be in \(0, 1\] \(the probability mass to keep\)"),
    C("cli-generate-negative-max-new-tokens", lambda t: cli("generate", BUNDLED, "To be",
                                                            "--max-new-tokens", -1), CliFailed,
      r"--max-new-tokens must be >= 0, got -1"),
    C("cli-generate-too-many-tokens", lambda t: cli("generate", BUNDLED, "To be",
                                                    "--max-new-tokens", 10_000), CliFailed,
      r"exceeds this model's n_positions=128\. Ask for at most \d+ new tokens\.\s*$"),
    C("cli-generate-missing-model", lambda t: cli("generate", t / "nowhere", "To be"), CliFailed,
      r"No folder '.*nowhere' and no model of that name\. Give a GPT-2 folder"),
    C("cli-generate-missing-adapter", lambda t: cli("generate", BUNDLED, "To be", "--adapter",
                                                    t / "none"), CliFailed,
      r"No adapter_config\.json in .*none: give the folder that save_pretrained"),
    C("cli-generate-empty-prompt", lambda t: cli("generate", BUNDLED, ""), CliFailed,
      r"the prompt is empty; give some text to continue"),
    C("cli-merge-adapter-of-another-size", lambda t: cli("merge", BUNDLED, adapter(t), t / "merged"),
      CliFailed, r"does not fit this model and config.*saved for another model"),
    C("cli-convert-missing-source", lambda t: cli("convert", t / "nowhere", t / "out"), CliFailed,
      r"nowhere is not a folder\. Give the folder holding config\.json"),
    C("cli-convert-output-exists", lambda t: cli("convert", saved(t), nonempty(t)), CliFailed,
      r"already exists and is not empty; minipeft will not overwrite it.*--overwrite"),
    C("cli-demo-steps-zero", lambda t: cli("demo", "--steps", 0, "--out", t / "demo"), CliFailed,
      r"--steps must be >= 1, got 0"),
    C("cli-demo-output-exists", lambda t: cli("demo", "--out", nonempty(t)), CliFailed,
      r"exists and is not empty; give another --out or pass --overwrite"),
    C("cli-info-r-zero", lambda t: cli("info", BUNDLED, "--r", 0), CliFailed,
      r"--r must be >= 1, got 0"),
    C("cli-pretrain-missing-text", lambda t: cli("pretrain", t / "none.txt", t / "out"), CliFailed,
      r"pretrain: no text file at .*none\.txt; give the path of a UTF-8 text file"),
    C("cli-pretrain-n-head-not-dividing", lambda t: cli("pretrain", jsonl(t, "text " * 500, "t.txt"),
                                                        t / "out", "--n-head", 3), CliFailed,
      r"n_embd \(128\) must be divisible by n_head \(3\)"),
    # ---- the other PEFT methods: configs and inputs (issue 4)
    C("bottleneck-reduction-factor-too-big", lambda t: get_peft_model(
        tiny(), BottleneckConfig(reduction_factor=16)), ConfigError,
      r"reduction_factor 16 leaves a bottleneck of .* = 0 for n_embd=8; choose a reduction_factor <= 8"),
    C("bottleneck-reduction-factor-zero", lambda t: BottleneckConfig(reduction_factor=0), ConfigError,
      r"reduction_factor must be a number > 0"),
    C("bottleneck-unknown-preset", lambda t: BottleneckConfig(preset="middle"), ConfigError,
      r"preset 'middle' is unknown; choose one of .*houlsby.*pfeiffer"),
    C("bottleneck-no-placement", lambda t: BottleneckConfig(mh_adapter=False, output_adapter=False),
      ConfigError, r"neither mh_adapter nor output_adapter: set mh_adapter=True"),
    C("bottleneck-unknown-non-linearity", lambda t: BottleneckConfig(non_linearity="sigmoidx"),
      ConfigError, r"non_linearity 'sigmoidx' is unknown; choose one of .*relu"),
    C("prefix-zero-virtual-tokens", lambda t: PrefixTuningConfig(num_virtual_tokens=0), ConfigError,
      r"num_virtual_tokens must be a positive integer .*got 0"),
    C("prompt-zero-virtual-tokens", lambda t: PromptTuningConfig(num_virtual_tokens=0), ConfigError,
      r"num_virtual_tokens must be a positive integer .*got 0"),
    C("prefix-longer-than-n_positions", lambda t: get_peft_model(
        tiny(), PrefixTuningConfig(num_virtual_tokens=12))(np.zeros((1, 8), int)), InputError,
      r"12 virtual tokens \+ 0 cached \+ 8 new tokens = 20 positions exceeds n_positions=16. Use at most 4"),
    C("prompt-longer-than-n_positions", lambda t: get_peft_model(
        tiny(), PromptTuningConfig(num_virtual_tokens=12))(np.zeros((1, 8), int)), InputError,
      r"12 virtual tokens \+ 8 tokens = 20 exceeds this model's n_positions=16; give at most 4"),
    C("prefix-unknown-convention", lambda t: PrefixTuningConfig(num_virtual_tokens=3, convention="mid"),
      ConfigError, r"convention must be 'peft' .* or 'adapters'"),
    C("prefix-encoder-hidden-size-zero", lambda t: PrefixTuningConfig(
        num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=0), ConfigError,
      r"encoder_hidden_size must be a positive integer or None"),
    C("prompt-text-init-without-text", lambda t: PromptTuningConfig(
        num_virtual_tokens=3, prompt_tuning_init="TEXT"), ConfigError,
      r"'TEXT' needs prompt_tuning_init_text"),
    C("ia3-feedforward-not-targeted", lambda t: get_peft_model(tiny(), IA3Config(
        target_modules=["c_attn"], feedforward_modules=["mlp.c_proj"])), ConfigError,
      r"feedforward_modules \['mlp.c_proj'\] are not in target_modules \['c_attn'\].*Add them"),
    C("ia3-unknown-module", lambda t: get_peft_model(tiny(), IA3Config(target_modules=["q_proj"])),
      ConfigError, r"'q_proj' is not a linear layer of GPT-2. Choose from"),
    C("ia3-unknown-slice", lambda t: IA3Config(c_attn_slices=["x"]), ConfigError,
      r"c_attn_slices must be a non-empty list of distinct slices .*'q', 'k', 'v'"),
    # --- adapter names, sizes, scales (issue 12, §1 and §3)
    C("adapter-name-absolute", lambda t: lora().add_adapter("/abs/elsewhere", LoraConfig(r=2)),
      ConfigError, r"adapter name '/abs/elsewhere' contains '/': an adapter name is saved as a "
      r"folder name .*e\.g\. 'task_a'"),
    C("adapter-name-parent", lambda t: get_peft_model(tiny(), LoraConfig(r=2), adapter_name=".."),
      ConfigError, r"adapter name '\.\.' contains '\.'"),
    C("adapter-name-subfolder-on-load", lambda t: PeftModel.from_pretrained(
        tiny(), adapter(t), adapter_name="x/y"), ConfigError, r"adapter name 'x/y' contains '/'"),
    C("lora-alpha-inf", lambda t: LoraConfig(lora_alpha=float("inf")), ConfigError,
      r"LoraConfig lora_alpha is inf: configs take finite numbers only.*Give a finite value"),
    C("bottleneck-scaling-nan", lambda t: BottleneckConfig(scaling=float("nan")), ConfigError,
      r"BottleneckConfig scaling is nan: configs take finite numbers only"),
    C("lora-rank-beyond-memory", lambda t: get_peft_model(tiny(), LoraConfig(r=10 ** 12)),
      ConfigError, r"LoraConfig r=1000000000000 on 1 modules would need [\d,]+ values = [\d,]+ bytes "
      r"\(.*\) .*more than this machine's memory.*choose smaller sizes"),
    C("bottleneck-tiny-reduction-factor", lambda t: get_peft_model(tiny(), BottleneckConfig(
        reduction_factor=1e-15)), ConfigError, r"would need [\d,]+ values .*choose smaller sizes"),
    C("prefix-hidden-size-beyond-memory", lambda t: get_peft_model(tiny(), PrefixTuningConfig(
        num_virtual_tokens=2, prefix_projection=True, encoder_hidden_size=10 ** 13)), ConfigError,
      r"encoder_hidden_size=10000000000000 would need .*choose smaller sizes"),
    C("lora-second-adapter-with-bias", lambda t: lora(bias="all").add_adapter(
        "b", LoraConfig(r=2, bias="lora_only")), ConfigError,
      r"already trains biases.*supports only 1 adapter with bias, as peft; set bias='none'"),
    C("lora-task-type-unknown", lambda t: LoraConfig(task_type="CASUAL_LM"), ConfigError,
      r"task_type 'CASUAL_LM' is not one of peft's task types .*use 'CAUSAL_LM' or None"),
    C("ia3-task-type-not-causal", lambda t: IA3Config(task_type="SEQ_CLS"), ConfigError,
      r"task_type 'SEQ_CLS' is a peft task minipeft does not run"),
    C("lora-init-pissa-niter-bad", lambda t: LoraConfig(init_lora_weights="pissa_niter_many"),
      ConfigError, r"init_lora_weights must be one of .*'pissa_niter_K'.*e\.g\. 'pissa_niter_4'"),
    C("adapter-config-nested-too-deep", lambda t: PeftModel.from_pretrained(
        tiny(), damaged_adapter(t, "adapter_config.json", b"[" * 100000 + b"]" * 100000)),
      ConfigError, r"adapter_config\.json nests JSON too deeply.*Save the adapter again"),
    C("adapter-config-rank-a-string", lambda t: PeftModel.from_pretrained(
        tiny(), adapter_with_config(t, r="8")), ConfigError,
      r"LoraConfig r must be a positive integer \(the rank\), got '8'"),
    C("lora-safe-merge-nan", lambda t: nan_lora().merge_adapter(safe_merge=True), ConfigError,
      r"safe_merge: merging adapter 'default' gives [\d,]+ NaN or infinite values .*Nothing was merged"),
    C("cli-finetune-alpha-nan", lambda t: finetune(t, "--lora-alpha", "nan"), CliFailed,
      r"LoraConfig lora_alpha is nan: configs take finite numbers only"),
    # --- malformed JSON through the one reader; text that is not UTF-8; outputs that are files
    C("config-json-nested-too-deep", lambda t: GPT2.from_pretrained(
        damaged(t, "config.json", b"[" * 100_000)), ConfigError,
      r"config\.json nests JSON too deeply to read.*save or convert the model again"),
    C("config-json-integer-too-long", lambda t: GPT2.from_pretrained(
        damaged(t, "config.json", b'{"n_layer": ' + b"9" * 5000 + b"}")), ConfigError,
      r"config\.json is not valid JSON: it holds an integer too long to read"),
    C("config-json-nan", lambda t: GPT2.from_pretrained(
        damaged(t, "config.json", b'{"layer_norm_epsilon": NaN}')), ConfigError,
      r"config\.json is not valid JSON: NaN is not JSON"),
    C("config-json-not-utf8", lambda t: GPT2.from_pretrained(
        damaged(t, "config.json", b'{"model_type": "gpt\xe9"}')), ConfigError,
      r"config\.json is not UTF-8 text \(byte 19 is 0xe9\); JSON files are UTF-8"),
    C("gpt2config-beyond-any-machine", lambda t: GPT2Config(n_embd=10 ** 7, n_head=1), ConfigError,
      r"describes 1\.44e\+16 parameters; minipeft takes at most 1e\+12 parameters"),
    C("data-line-nested-too-deep", lambda t: read_jsonl(jsonl(t, GOOD_LINE + "[" * 100_000 + "\n")),
      InputError, r"data\.jsonl, line 2 nests JSON too deeply to read"),
    C("data-line-lone-surrogate",
      lambda t: read_jsonl(jsonl(t, '{"prompt": "a\\udcff", "completion": " b"}')),
      InputError, r"data\.jsonl, line 1: 'prompt' is not UTF-8 text: character 1 is the byte 0xff"),
    C("data-file-not-utf8",
      lambda t: read_jsonl(latin1(t, "d.jsonl", '{"prompt": "café", "completion": " b"}')),
      InputError,
      r"d\.jsonl, line 1: not UTF-8 text \(byte 0xe9 at column 16\); save the JSONL file as UTF-8"),
    C("tokenizer-vocab-nested-too-deep", lambda t: load_tokenizer(
        bpe_folder(t, b"[" * 100_000)), CheckpointError,
      r"vocab\.json nests JSON too deeply to read.*good copy of GPT-2's vocab\.json / encoder\.json"),
    C("cli-generate-prompt-not-utf8", lambda t: cli("generate", BUNDLED, "caf\udce9"), CliFailed,
      r"the prompt is not UTF-8 text: character 3 is the byte 0xe9"),
    C("cli-finetune-out-is-a-file", lambda t: finetune(t, out=users_file(t)), CliFailed,
      r"OUT .*notes\.txt is a file, not a folder; give the path of a folder"),
    C("cli-demo-out-is-a-file", lambda t: cli("demo", "--quick", "--out", users_file(t)), CliFailed,
      r"--out .*notes\.txt is a file, not a folder"),
    C("cli-merge-out-under-a-file", lambda t: cli("merge", BUNDLED, t / "a", users_file(t) / "m"),
      CliFailed, r"OUT .*notes\.txt/m cannot be created: .*notes\.txt is a file, not a folder"),
    C("cli-pretrain-corpus-not-utf8", lambda t: cli("pretrain", latin1(t, "c.txt", "Ophélie\n" * 300),
                                                     t / "m", "--steps", 1), CliFailed,
      r"c\.txt, line 1: not UTF-8 text \(byte 0xe9 at column 4\)"),
]


def latin1(tmp, name, text):
    """A text file in Latin-1, not UTF-8."""
    (tmp / name).write_bytes(text.encode("latin-1"))
    return tmp / name


def users_file(tmp):
    """A file of the user's where an output folder was expected."""
    (tmp / "notes.txt").write_text("mine")
    return tmp / "notes.txt"


def bpe_folder(tmp, vocab: bytes):
    """A tokenizer folder: ``vocab`` as vocab.json beside GPT-2's merges."""
    import shutil

    from minipeft.tokenizer import GPT2_BPE_DIR
    (tmp / "tok").mkdir()
    (tmp / "tok" / "vocab.json").write_bytes(vocab)
    shutil.copyfile(GPT2_BPE_DIR / "vocab.bpe", tmp / "tok" / "merges.txt")
    return tmp / "tok"


def nan_lora() -> PeftModel:
    """A LoRA whose B holds a NaN (a diverged run)."""
    pm = lora(r=2)
    next(a for k, a in pm.trainable_parameters().items() if "lora_B" in k)[0, 0] = np.nan
    return pm


def damaged_adapter(tmp, name, data):
    """An adapter folder with ``name`` replaced by ``data`` (None: removed)."""
    folder = adapter(tmp)
    if data is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(data)
    return folder


def test_the_battery_is_big_and_ids_are_distinct():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert len(CASES) >= 40


NEEDS_BUNDLED = {c.id for c in CASES if c.id.startswith("cli-") or c.id.startswith("data-too")
                 or c.id.startswith("data-max")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    if case.id in NEEDS_BUNDLED and bundled_dir(BUNDLED) is None:
        pytest.skip("the bundled model weights/tiny-shakespeare is missing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(case.error) as info:
            case.trigger(tmp_path)
    err = info.value
    message = str(err)
    assert re.search(case.pattern, message, re.S), \
        f"{type(err).__name__}: {message!r}\ndoes not match {case.pattern!r}"
    if isinstance(err, CliFailed):
        assert err.code != 0 and "Traceback" not in message
        prefix = f"minipeft {err.command}: error: "
        if err.code == 2:                       # argparse: the usage line, then the error
            assert prefix in message, message
        else:
            assert err.code == 1 and message.startswith(prefix), message
    else:
        assert isinstance(err, MinipeftError), f"{type(err).__name__} is not a MinipeftError"
