"""Bad inputs raise a MinipeftError subclass whose message names the problem.

Two families: what users pass to a model (token ids, attention masks, labels) and
the checkpoint folders they load or convert (missing files, wrong tensors, configs
of other models, corrupt files).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy

from minipeft import (
    GPT2,
    CheckpointError,
    ConfigError,
    GPT2Config,
    InputError,
    MinipeftError,
    WeightsNotFoundError,
    convert_checkpoint,
)
from minipeft.io.checkpoint import load_folder

CFG = dict(n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=20)
V, P = CFG["vocab_size"], CFG["n_positions"]
IDS = np.array([[1, 2, 3], [4, 5, 6]])


def raises(cls, match, fn, *args, **kwargs):
    """pytest.raises(cls, match=...) that also checks the MinipeftError family."""
    with pytest.raises(cls, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, MinipeftError)
    return info.value


@pytest.fixture(scope="module")
def hf(hf_checkpoint):
    return hf_checkpoint(seed=11, **CFG)


@pytest.fixture(scope="module")
def model(hf):
    return GPT2.from_pretrained(hf[0])


# ------------------------------------------------------------------ model inputs
CALLS = {
    "call": lambda m, ids: m(ids),
    "loss_and_grads": lambda m, ids: m.loss_and_grads(ids, ids),
    "loss": lambda m, ids: m.loss(ids, ids),
}

BAD_IDS = [
    ("id=vocab_size", [[1, V]], rf"input_ids holds {V}, outside .*0\.\.{V - 1}"),
    ("id=-1", [[-1, 2]], r"input_ids holds -1, outside"),
    ("float", [[1.0, 2.0]], r"must hold integers, got dtype float64"),
    ("bool", np.array([[True, False]]), r"must hold integers, got dtype bool"),
    ("ragged", [[1, 2, 3], [4]], r"equal-length"),
    ("1-D", [1, 2, 3], r"shape \(B, T\), got 1 dimension.*wrap it"),
    ("3-D", np.ones((1, 2, 2), np.int64), r"shape \(B, T\), got 3 dimension"),
    ("empty-array", np.zeros((1, 0), np.int64), r"input_ids is empty"),
    ("empty-list", [[]], r"input_ids is empty"),
    ("T>n_positions", np.ones((1, P + 1), np.int64), rf"{P + 1} tokens long .*n_positions={P}"),
    ("strings", [["a", "b"]], r"must hold integers"),
    ("None", None, r"non-numbers"),
]


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("ids,match", [c[1:] for c in BAD_IDS], ids=[c[0] for c in BAD_IDS])
def test_bad_input_ids(model, call, ids, match):
    raises(InputError, match, CALLS[call], model, ids)


BAD_MASKS = [
    ("wrong-shape", np.ones((2, 2)), r"attention_mask has shape \(2, 2\) but must match .*\(2, 3\)"),
    ("1-D", np.ones(3), r"attention_mask has shape \(3,\)"),
    ("value-2", [[1, 1, 2], [1, 1, 1]], r"only 0 \(padding\) and 1"),
    ("value-0.5", [[1, 1, 0.5], [1, 1, 1]], r"only 0 \(padding\) and 1"),
    ("value--1", [[1, 1, -1], [1, 1, 1]], r"only 0 \(padding\) and 1"),
    ("strings", [["1", "1", "1"], ["1", "1", "1"]], r"only 0 \(padding\) and 1"),
    ("ragged", [[1, 1, 1], [1, 1]], r"attention_mask could not be read as an array"),
]


@pytest.mark.parametrize("mask,match", [c[1:] for c in BAD_MASKS], ids=[c[0] for c in BAD_MASKS])
def test_bad_attention_mask(model, mask, match):
    raises(InputError, match, model, IDS, attention_mask=mask)
    raises(InputError, match, model.loss_and_grads, IDS, IDS, attention_mask=mask)


BAD_LABELS = [
    ("wrong-shape", IDS, IDS[:, :2], r"labels has shape \(2, 2\) but must match input_ids \(2, 3\)"),
    ("one-row", IDS, IDS[:1], r"labels has shape \(1, 3\)"),
    ("label=vocab_size", IDS, [[1, 2, V], [4, 5, 6]], rf"labels holds {V}: .*0\.\.{V - 1} or -100"),
    ("label=-5", IDS, [[1, 2, 3], [4, -5, 6]], r"labels holds -5"),
    ("float", IDS, IDS.astype(float), r"labels must hold integers"),
    ("all-ignored", IDS, np.full_like(IDS, -100), r"No token is left to predict"),
    ("only-first-labelled", IDS, [[1, -100, -100], [4, -100, -100]], r"No token is left"),
    ("T=1", [[1]], [[1]], r"No token is left to predict"),
]


@pytest.mark.parametrize("ids,labels,match", [c[1:] for c in BAD_LABELS],
                         ids=[c[0] for c in BAD_LABELS])
def test_bad_labels(model, ids, labels, match):
    raises(InputError, match, model.loss_and_grads, ids, labels)
    raises(InputError, match, model.loss, ids, labels)


def test_good_inputs_pass(model):
    """The checks refuse only what is wrong: other int dtypes, float or bool masks, -100."""
    ids32 = IDS.astype(np.int32)
    mask = [[1.0, 1.0, 0.0], [1, 1, 1]]
    assert model(ids32).shape == (2, 3, V)
    assert model(IDS.astype(np.uint8), attention_mask=np.array(mask, bool)).shape == (2, 3, V)
    labels = IDS.copy()
    labels[0, 2] = -100
    loss, grads = model.loss_and_grads(ids32, labels, attention_mask=mask)
    assert np.isfinite(loss) and set(grads) == set(model.params)
    assert model([[V - 1]]).shape == (1, 1, V)
    assert model(np.zeros((1, P), np.int64)).shape == (1, P, V)


# ------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def good(hf):
    """(config dict, float32 tensors) of a valid checkpoint, to be broken per test."""
    folder, _ = hf
    config = json.loads((folder / "config.json").read_text())
    return config, load_folder(folder)[1]


def write(folder, config=None, tensors=None):
    """A checkpoint folder: config a dict (JSON) or str (raw text); None leaves a file out."""
    folder.mkdir()
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (folder / "config.json").write_text(text)
    if tensors is not None:
        safetensors.numpy.save_file(tensors, str(folder / "model.safetensors"))
    return folder


LOADERS = {
    "from_pretrained": lambda src, dst: GPT2.from_pretrained(src),
    "convert": lambda src, dst: convert_checkpoint(src, dst),
}


def refused(loader, src, cls, match):
    """Loading or converting src raises cls(match...); the conversion leaves nothing."""
    dst = src.parent / "dst"
    err = raises(cls, match, LOADERS[loader], src, dst)
    assert not dst.exists()
    assert not [p for p in src.parent.iterdir() if p.name.startswith(".")]
    return err


@pytest.fixture(params=list(LOADERS))
def loader(request):
    return request.param


def test_no_weights_file(good, tmp_path, loader):
    src = write(tmp_path / "src", config=good[0])
    refused(loader, src, WeightsNotFoundError, r"has no weights: expected model\.safetensors")


def test_no_config(good, tmp_path, loader):
    src = write(tmp_path / "src", tensors=good[1])
    refused(loader, src, WeightsNotFoundError, r"has no config\.json")


def test_path_does_not_exist(tmp_path, loader):
    refused(loader, tmp_path / "nowhere", WeightsNotFoundError, r"nowhere")


def test_file_instead_of_folder(good, tmp_path, loader):
    src = write(tmp_path / "src", config=good[0], tensors=good[1]) / "model.safetensors"
    refused(loader, src, WeightsNotFoundError, r"model\.safetensors.*(is a file|is not a folder)")


def test_missing_tensor(good, tmp_path, loader):
    tensors = dict(good[1])
    del tensors["transformer.h.0.attn.c_proj.bias"]
    src = write(tmp_path / "src", good[0], tensors)
    refused(loader, src, CheckpointError, r"missing 1 tensor.*transformer\.h\.0\.attn\.c_proj\.bias")


def test_extra_tensor(good, tmp_path, loader):
    tensors = dict(good[1], **{"transformer.h.1.ln_1.weight": np.ones(8, np.float32)})
    src = write(tmp_path / "src", good[0], tensors)
    refused(loader, src, CheckpointError, r"does not have: transformer\.h\.1\.ln_1\.weight")


def test_misshaped_tensor(good, tmp_path, loader):
    tensors = dict(good[1], **{"transformer.wpe.weight": np.zeros((P - 1, 8), np.float32)})
    src = write(tmp_path / "src", good[0], tensors)
    refused(loader, src, CheckpointError,
            rf"transformer\.wpe\.weight has shape \({P - 1}, 8\).*needs \({P}, 8\)")


def test_integer_tensor(good, tmp_path, loader):
    tensors = dict(good[1], **{"transformer.wte.weight": np.ones((V, 8), np.int32)})
    src = write(tmp_path / "src", good[0], tensors)
    refused(loader, src, CheckpointError, r"transformer\.wte\.weight has dtype int32")


BAD_CONFIGS = [
    ("llama", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
     r"not a GPT-2 checkpoint.*'llama'"),
    ("bert", {"model_type": "bert", "architectures": ["BertModel"]}, r"not a GPT-2 checkpoint.*'bert'"),
    ("relu", {"activation_function": "relu"}, r"activation_function='relu'"),
    ("untied", {"tie_word_embeddings": False}, r"tie_word_embeddings=False"),
    ("n_embd%n_head", {"n_head": 3}, r"n_embd \(8\) must be divisible by n_head \(3\)"),
    ("n_layer=0", {"n_layer": 0}, r"n_layer must be a positive integer"),
    ("n_layer-string", {"n_layer": "1"}, r"n_layer must be a positive integer"),
    ("n_inner-bool", {"n_inner": True}, r"n_inner must be a positive integer"),
    ("epsilon<0", {"layer_norm_epsilon": -1.0}, r"layer_norm_epsilon must be .*> 0"),
    ("epsilon-string", {"layer_norm_epsilon": "1e-5"}, r"layer_norm_epsilon must be .*> 0"),
    ("epsilon-bool", {"layer_norm_epsilon": True}, r"layer_norm_epsilon must be .*> 0"),
]


@pytest.mark.parametrize("change,match", [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config(good, tmp_path, loader, change, match):
    src = write(tmp_path / "src", dict(good[0], **change), good[1])
    refused(loader, src, ConfigError, match)


@pytest.mark.parametrize("change,match", [
    ({}, None),
    ({"n_head": 3}, r"n_embd \(8\) must be divisible by n_head \(3\)"),
    ({"layer_norm_epsilon": "1e-5"}, r"layer_norm_epsilon must be .*> 0"),
    ({"n_inner": 0}, r"n_inner must be a positive integer"),
], ids=["valid", "n_embd%n_head", "epsilon-string", "n_inner=0"])
def test_minipeft_own_config_format(good, tmp_path, loader, change, match):
    """config.json as GPT2Config.to_dict() writes it (no model_type) is checked the same way."""
    config = dict(GPT2Config(**CFG).to_dict(), **change)
    src = write(tmp_path / "src", config, good[1])
    if match is None:
        LOADERS[loader](src, tmp_path / "dst")
    else:
        refused(loader, src, ConfigError, match)


@pytest.mark.parametrize("text,match", [
    ("{not json", r"config\.json is not valid JSON: Expecting property name"),
    ("", r"config\.json is empty"),
    ("[1, 2]", r"config\.json must hold a JSON object \(\{\.\.\.\}\) at the top, got a JSON array"),
], ids=["invalid", "empty", "list"])
def test_unreadable_config(good, tmp_path, loader, text, match):
    src = write(tmp_path / "src", text, good[1])
    refused(loader, src, ConfigError, match)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "header-only", "empty"])
def test_corrupt_safetensors(good, tmp_path, loader, damage):
    src = write(tmp_path / "src", good[0], good[1])
    path = src / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not safetensors at all " * 20, "truncated": data[:-100],
                      "header-only": data[:6], "empty": b""}[damage])
    refused(loader, src, CheckpointError, r"Cannot read .*model\.safetensors.*corrupt")


def test_corrupt_pytorch_bin(good, tmp_path, loader):
    src = write(tmp_path / "src", good[0])
    (src / "pytorch_model.bin").write_bytes(b"\x80\x02 this is not a pickle")
    refused(loader, src, CheckpointError, r"Cannot read .*pytorch_model\.bin")


def test_sharded_index_problems(hf, tmp_path, loader):
    folder, torch_model = hf
    src = tmp_path / "src"
    torch_model.save_pretrained(src, max_shard_size="1KB")
    index = src / "model.safetensors.index.json"
    shard = sorted(src.glob("model-*.safetensors"))[-1]
    shard.unlink()
    refused(loader, src, WeightsNotFoundError, rf"Shard .*{shard.name} named in the index is missing")
    index.write_text("{\"metadata\": {}}")
    refused(loader, src, CheckpointError,                 # the message before / after io/'s JSON reader
            r"Cannot read .*model\.safetensors\.index\.json|"
            r"model\.safetensors\.index\.json has no \"weight_map\" object of tensor -> shard file")


def test_unknown_trainable_name_is_refused():
    from minipeft.io.checkpoint import expected_shapes
    cfg = GPT2Config(n_layer=1, n_head=1, n_embd=4, n_positions=4, vocab_size=5)
    params = {k: np.zeros(s, np.float32) for k, s in expected_shapes(cfg).items()}
    with pytest.raises(ConfigError, match="lm_head.weight"):
        GPT2(cfg, params, trainable=["lm_head.weight"])
