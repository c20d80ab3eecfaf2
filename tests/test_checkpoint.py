"""Converting Hugging Face GPT-2 folders, the checkpoint flavours that load, the
`minipeft convert` command, save_pretrained / astype, and finding a model by name.

Nothing here touches the network: hub downloads are refused by HF_HUB_OFFLINE or
by a monkeypatched ``huggingface_hub.snapshot_download``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from minipeft import (
    GPT2,
    ConfigError,
    GPT2Config,
    HubError,
    MinipeftError,
    WeightsNotFoundError,
    convert_checkpoint,
)
from minipeft.cli import main
from minipeft.errors import CheckpointError
from minipeft.io.checkpoint import expected_shapes, load_folder
from minipeft.io.paths import HUB_NAMES
from minipeft.tokenizer import GPT2_BPE_DIR

CFG = dict(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=40)
IDS = np.array([[1, 5, 9, 39, 0, 7], [3, 3, 2, 8, 30, 11]])


@pytest.fixture
def hf(hf_checkpoint):
    """(folder, torch model) of a tiny random GPT-2 saved by save_pretrained."""
    return hf_checkpoint(seed=7, **CFG)


def torch_logits(model, ids=IDS):
    import torch
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


@pytest.fixture
def occupied(tmp_path):
    """An existing output folder tmp_path/conv holding one file of the user's."""
    dst = tmp_path / "conv"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    return dst


def leftovers(folder):
    """Hidden entries (temp or .old folders) that a write may have left beside dst."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def visible(folder):
    """What the user sees in folder: its entries without minipeft's hidden ones."""
    return sorted(p for p in os.listdir(folder) if not p.startswith(".minipeft"))


def state_numpy(model):
    """The torch model's parameters as float32 NumPy arrays, GPT2LMHeadModel names."""
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ conversion
def test_convert_writes_float32_folder_with_expected_keys(hf, tmp_path):
    folder, torch_model = hf
    dst = convert_checkpoint(folder, tmp_path / "conv")
    assert dst == tmp_path / "conv"
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors"]
    config = GPT2Config.from_json_file(dst / "config.json")
    assert config == GPT2Config(**CFG)
    tensors = safetensors.numpy.load_file(str(dst / "model.safetensors"))
    shapes = expected_shapes(config)
    assert set(tensors) == set(shapes)
    state = state_numpy(torch_model)
    for name, array in tensors.items():
        assert array.dtype == np.float32, name
        assert array.shape == shapes[name], name
        np.testing.assert_array_equal(array, state[name], err_msg=name)
    assert leftovers(tmp_path) == []


def test_converted_folder_is_a_valid_transformers_folder(hf, tmp_path):
    from transformers import GPT2LMHeadModel
    folder, torch_model = hf
    dst = convert_checkpoint(folder, tmp_path / "conv")
    reloaded = GPT2LMHeadModel.from_pretrained(dst).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()
    np.testing.assert_array_equal(torch_logits(reloaded), torch_logits(torch_model))


def test_converted_folder_gives_the_same_logits(hf, tmp_path):
    folder, torch_model = hf
    dst = convert_checkpoint(folder, tmp_path / "conv")
    ours = GPT2.from_pretrained(dst)(IDS)
    np.testing.assert_array_equal(ours, GPT2.from_pretrained(folder)(IDS))
    ref = torch_logits(torch_model)
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


# ------------------------------------------------------------------ flavours
def write_bin(src, torch_model):
    torch_model.save_pretrained(src, safe_serialization=False)
    assert (src / "pytorch_model.bin").is_file() and not (src / "model.safetensors").exists()


def write_hub_style(src, torch_model):
    """Like the hub's original gpt2: no 'transformer.' prefix, mask buffers, lm_head."""
    state = state_numpy(torch_model)
    P = CFG["n_positions"]
    raw = {k.removeprefix("transformer."): v for k, v in state.items()
           if k.startswith("transformer.")}
    for i in range(CFG["n_layer"]):
        raw[f"h.{i}.attn.bias"] = np.tril(np.ones((P, P), np.float32))[None, None]
        raw[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    raw["lm_head.weight"] = state["transformer.wte.weight"].copy()
    assert "wte.weight" in raw and not any(k.startswith("transformer.") for k in raw)
    src.mkdir()
    safetensors.numpy.save_file(raw, str(src / "model.safetensors"))
    torch_model.config.to_json_file(src / "config.json")


def write_float16(src, torch_model):
    state = state_numpy(torch_model)
    half = {k: state[k].astype(np.float16) for k in expected_shapes(GPT2Config(**CFG))}
    src.mkdir()
    safetensors.numpy.save_file(half, str(src / "model.safetensors"))
    torch_model.config.to_json_file(src / "config.json")


def write_bfloat16(src, torch_model):
    import copy

    import torch
    copy.deepcopy(torch_model).to(torch.bfloat16).save_pretrained(src)


def write_sharded(src, torch_model):
    torch_model.save_pretrained(src, max_shard_size="4KB")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (src / "model.safetensors").exists()


FLAVOURS = {"pytorch_model.bin": write_bin, "hub-style-names": write_hub_style,
            "float16": write_float16, "bfloat16": write_bfloat16, "sharded": write_sharded}


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_checkpoint_flavours_load_to_the_same_params(hf, tmp_path, flavour):
    folder, torch_model = hf
    src = tmp_path / "src"
    FLAVOURS[flavour](src, torch_model)
    _, want = load_folder(folder)
    if flavour == "float16":            # up-cast: the float16 values, exactly
        rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in want.items()}
        assert any(not np.array_equal(rounded[k], want[k]) for k in want)
        want = rounded
    if flavour == "bfloat16":           # up-cast: the bfloat16 values, exactly (as torch rounds)
        import torch
        want = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in want.items()}

    config, params = load_folder(src)
    assert config == GPT2Config(**CFG)
    assert set(params) == set(want)
    for k in want:
        assert params[k].dtype == np.float32, k
        np.testing.assert_array_equal(params[k], want[k], err_msg=k)

    dst = convert_checkpoint(src, tmp_path / "conv")
    tensors = safetensors.numpy.load_file(str(dst / "model.safetensors"))
    assert set(tensors) == set(expected_shapes(config))
    assert all(t.dtype == np.float32 for t in tensors.values())
    np.testing.assert_array_equal(GPT2.from_pretrained(dst)(IDS), GPT2.from_pretrained(src)(IDS))
    if flavour not in ("float16", "bfloat16"):
        np.testing.assert_array_equal(GPT2.from_pretrained(src)(IDS),
                                      GPT2.from_pretrained(folder)(IDS))


def test_tokenizer_files_are_copied(hf, tmp_path):
    folder, _ = hf
    src = tmp_path / "src"
    shutil.copytree(folder, src)
    shutil.copyfile(GPT2_BPE_DIR / "encoder.json", src / "vocab.json")     # GPT-2's, bundled
    shutil.copyfile(GPT2_BPE_DIR / "vocab.bpe", src / "merges.txt")
    dst = convert_checkpoint(src, tmp_path / "conv")
    assert sorted(os.listdir(dst)) == ["config.json", "merges.txt", "model.safetensors",
                                       "vocab.json"]
    for name in ("vocab.json", "merges.txt"):
        assert (dst / name).read_bytes() == (src / name).read_bytes()


# ------------------------------------------------------------------ overwriting
def test_refuses_to_overwrite_a_non_empty_folder(hf, tmp_path):
    folder, _ = hf
    dst = tmp_path / "conv"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(MinipeftError, match="overwrite"):
        convert_checkpoint(folder, dst)
    assert sorted(os.listdir(dst)) == ["keep.txt"]
    assert leftovers(tmp_path) == []


def test_an_empty_existing_folder_is_filled(hf, tmp_path):
    folder, _ = hf
    dst = tmp_path / "conv"
    dst.mkdir()
    convert_checkpoint(folder, dst)
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors"]
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_what_minipeft_writes_and_keeps_the_rest(hf, tmp_path, occupied):
    """overwrite=True replaces config.json and model.safetensors (together: links into
    one hidden generation, see io/atomic.py); the user's keep.txt stays as it was."""
    folder, _ = hf
    dst = occupied
    convert_checkpoint(folder, dst, overwrite=True)
    assert visible(dst) == ["config.json", "keep.txt", "model.safetensors"]
    assert (dst / "keep.txt").read_text() == "old"
    np.testing.assert_array_equal(GPT2.from_pretrained(dst)(IDS), GPT2.from_pretrained(folder)(IDS))
    assert leftovers(tmp_path) == []
    assert sorted(p for p in os.listdir(dst) if p.startswith(".")) == \
        [".minipeft-model", os.readlink(dst / ".minipeft-model")]      # the live generation only


def test_overwrite_of_a_folder_of_minipeft_files_replaces_it_whole(hf, tmp_path):
    """A folder holding only what the save writes is replaced in one swap: plain files."""
    folder, _ = hf
    dst = convert_checkpoint(folder, tmp_path / "conv")
    GPT2.from_pretrained(folder).save_pretrained(dst, overwrite=True)
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors"]
    assert not any((dst / p).is_symlink() for p in os.listdir(dst))
    assert leftovers(tmp_path) == []


def test_overwrite_never_replaces_a_users_file_but_replaces_a_link(hf, tmp_path):
    """A file at the destination is the user's: even with overwrite it stays, and the
    error says it is a file (a save replaces only what minipeft writes). A link there is
    replaced by the folder; what it points to is untouched."""
    from minipeft import InputError
    folder, _ = hf
    dst = tmp_path / "conv"
    dst.write_text("in the way")
    with pytest.raises(MinipeftError, match="overwrite"):
        convert_checkpoint(folder, dst)
    with pytest.raises(InputError, match="is a file, not a folder"):
        convert_checkpoint(folder, dst, overwrite=True)
    assert dst.read_text() == "in the way"
    dst.unlink()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("theirs")
    dst.symlink_to(target, target_is_directory=True)
    with pytest.raises(MinipeftError, match="overwrite"):
        convert_checkpoint(folder, dst)
    convert_checkpoint(folder, dst, overwrite=True)
    assert dst.is_dir() and not dst.is_symlink()
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors"]
    assert leftovers(tmp_path) == []
    assert os.listdir(target) == ["keep.txt"]       # the link is replaced, not what it points to


def test_failed_conversion_leaves_nothing(hf, tmp_path):
    folder, _ = hf
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(folder / "config.json", src / "config.json")
    _, params = load_folder(folder)
    del params["transformer.h.1.mlp.c_fc.bias"]
    safetensors.numpy.save_file(params, str(src / "model.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "conv"
    with pytest.raises(CheckpointError, match=r"transformer\.h\.1\.mlp\.c_fc\.bias"):
        convert_checkpoint(src, dst)
    assert not dst.exists()
    assert os.listdir(out) == []


def test_failed_write_keeps_the_old_folder(hf, tmp_path, occupied, monkeypatch):
    folder, _ = hf
    dst = occupied

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(MinipeftError, match="disk is full") as info:
        convert_checkpoint(folder, dst, overwrite=True)
    assert isinstance(info.value, OSError) and info.value.errno == 28
    assert sorted(os.listdir(dst)) == ["keep.txt"]
    assert leftovers(tmp_path) == []
    new = tmp_path / "new"
    with pytest.raises(MinipeftError, match="disk is full"):
        convert_checkpoint(folder, new)
    assert not new.exists()
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ command line
def test_cli_convert_prints_a_summary(hf, tmp_path, capsys):
    folder, _ = hf
    dst = tmp_path / "conv"
    assert main(["convert", str(folder), str(dst)]) == 0
    out, err = capsys.readouterr()
    n = sum(int(np.prod(s)) for s in expected_shapes(GPT2Config(**CFG)).values())
    assert "converted" in out and str(dst) in out
    assert "n_layer=2" in out and "n_embd=16" in out and "vocab_size=40" in out
    assert f"{n:,} parameters" in out
    assert err == ""
    np.testing.assert_array_equal(GPT2.from_pretrained(dst)(IDS), GPT2.from_pretrained(folder)(IDS))

    assert main(["convert", str(folder), str(dst)]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("minipeft convert: error: ") and "overwrite" in err
    assert "Traceback" not in err and out == ""

    assert main(["convert", str(folder), str(dst), "--overwrite"]) == 0
    assert "converted" in capsys.readouterr().out


def test_cli_convert_error_is_one_message(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["convert", str(missing), str(tmp_path / "conv")]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("minipeft convert: error: ")
    assert str(missing) in err and "not a folder" in err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "conv").exists()


def test_python_dash_m_minipeft(hf, tmp_path):
    folder, _ = hf
    missing, dst = tmp_path / "missing", tmp_path / "conv"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "minipeft", "convert", str(missing), str(dst)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 1
    assert "minipeft convert: error: " in run.stderr and str(missing) in run.stderr
    assert "Traceback" not in run.stderr
    assert not dst.exists()

    run = subprocess.run([sys.executable, "-m", "minipeft", "convert", str(folder), str(dst)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "converted" in run.stdout
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors"]


# ------------------------------------------------------------------ save_pretrained / astype
def test_save_pretrained_round_trips(hf, tmp_path):
    folder, _ = hf
    model = GPT2.from_pretrained(folder)
    saved = model.save_pretrained(tmp_path / "saved")
    back = GPT2.from_pretrained(saved)
    assert back.config == model.config
    assert set(back.params) == set(model.params)
    for k in model.params:
        np.testing.assert_array_equal(back.params[k], model.params[k], err_msg=k)
    np.testing.assert_array_equal(back(IDS), model(IDS))
    with pytest.raises(MinipeftError, match="overwrite"):
        model.save_pretrained(saved)
    model.astype(np.float64).save_pretrained(saved, overwrite=True)     # saved as float32
    again = GPT2.from_pretrained(saved)
    assert again.dtype == np.float32
    np.testing.assert_array_equal(again(IDS), model(IDS))
    assert leftovers(tmp_path) == []


def test_astype(hf):
    folder, _ = hf
    model = GPT2.from_pretrained(folder)
    wide = model.astype(np.float64)
    assert wide.dtype == np.float64 and model.dtype == np.float32
    for k, v in model.params.items():
        assert wide.params[k].dtype == np.float64
        np.testing.assert_array_equal(wide.params[k], v.astype(np.float64), err_msg=k)
    back = wide.astype(np.float32)
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)
    assert np.abs(wide(IDS) - model(IDS)).max() <= 1e-5 * np.abs(wide(IDS)).max()
    for dtype in (np.float16, np.int32):
        with pytest.raises(ConfigError, match="float32 or float64") as info:
            model.astype(dtype)
        assert isinstance(info.value, MinipeftError)


# ------------------------------------------------------------------ names
@pytest.fixture
def weights(tmp_path, monkeypatch):
    """An empty MINIPEFT_WEIGHTS folder; the working directory moved elsewhere, and
    any call into the hub fails the test."""
    import huggingface_hub
    root = tmp_path / "weights"
    root.mkdir()
    monkeypatch.setenv("MINIPEFT_WEIGHTS", str(root))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def no_network(*args, **kwargs):
        raise AssertionError(f"a test reached the hub: {args} {kwargs}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    return root


def test_bundled_name(hf, weights):
    folder, _ = hf
    convert_checkpoint(folder, weights / "my-tiny")
    model = GPT2.from_pretrained("my-tiny")
    np.testing.assert_array_equal(model(IDS), GPT2.from_pretrained(folder)(IDS))


def test_unknown_name_lists_the_names(hf, weights):
    with pytest.raises(WeightsNotFoundError, match="no-such-model") as info:
        GPT2.from_pretrained("no-such-model")
    assert isinstance(info.value, MinipeftError)
    assert all(name in str(info.value) for name in HUB_NAMES)
    convert_checkpoint(hf[0], weights / "my-tiny")
    with pytest.raises(WeightsNotFoundError, match="my-tiny"):
        GPT2.from_pretrained("no-such-model")


def test_hub_name_offline_says_how_to_convert(weights, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="minipeft convert") as info:
        GPT2.from_pretrained("gpt2")
    assert isinstance(info.value, MinipeftError)
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert os.listdir(weights) == []


def test_hub_name_without_network(weights, monkeypatch):
    import huggingface_hub
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def unreachable(*args, **kwargs):
        calls.append(kwargs)
        raise OSError("Failed to resolve 'huggingface.co'")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(HubError, match="network") as info:
        GPT2.from_pretrained("gpt2")
    assert isinstance(info.value, MinipeftError)
    assert "minipeft convert" in str(info.value)
    assert [c["repo_id"] for c in calls] == ["openai-community/gpt2"]
    assert os.listdir(weights) == []


# ------------------------------------------------------------------ edge cases of saving
def test_failed_swap_puts_the_old_folder_back(hf, tmp_path, monkeypatch):
    """Where the one-step exchange is not available and the final rename fails, the
    previous folder is restored, whole."""
    import minipeft.io.atomic as atomic
    folder, _ = hf
    dst = convert_checkpoint(folder, tmp_path / "conv")
    before = {p: (dst / p).read_bytes() for p in os.listdir(dst)}
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def replace(src, target):
        if str(src).startswith(str(tmp_path / ".conv.")) and ".old." not in str(src):
            raise OSError(5, "Input/output error")      # the new folder cannot move in
        return real_replace(src, target)
    monkeypatch.setattr(os, "replace", replace)
    other = GPT2.from_pretrained(folder)
    other.params["transformer.wte.weight"] += 1.0           # a version that differs
    with pytest.raises(OSError, match="Input/output"):
        other.save_pretrained(dst, overwrite=True)
    assert {p: (dst / p).read_bytes() for p in os.listdir(dst)} == before
    assert leftovers(tmp_path) == []


def test_convert_onto_its_own_source_is_refused(hf, tmp_path):
    folder, _ = hf
    src = tmp_path / "src"
    shutil.copytree(folder, src)
    with pytest.raises(MinipeftError, match="own source"):
        convert_checkpoint(src, src, overwrite=True)
    assert sorted(os.listdir(src)) == sorted(os.listdir(folder))


def test_shard_index_cannot_point_outside_its_folder(hf, tmp_path):
    folder, _ = hf
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(folder / "config.json", src / "config.json")
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"transformer.wte.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside its folder"):
        GPT2.from_pretrained(src)


def test_converted_config_names_eos_only_when_the_vocabulary_has_it(hf, tmp_path):
    folder, _ = hf
    config = json.loads((convert_checkpoint(folder, tmp_path / "c") / "config.json").read_text())
    assert "eos_token_id" not in config                 # vocab_size 40 has no id 50256
    full = GPT2Config(n_layer=1, n_head=1, n_embd=4, n_positions=4)
    from minipeft.io.checkpoint import hf_config_dict
    assert hf_config_dict(full)["eos_token_id"] == 50256


def test_own_config_format_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="Unknown GPT-2 config field"):
        GPT2Config.from_dict({"n_layer": 2, "n_layyer": 3})


def test_hub_name_downloads_once_and_converts(hf, weights, monkeypatch):
    """With network, a hub name is fetched (here: a local folder stands in for the
    download), converted into weights/<name>/ once, and loaded from there after."""
    import huggingface_hub
    folder, _ = hf
    src = weights.parent / "hub-cache"
    shutil.copytree(folder, src)
    shutil.copyfile(GPT2_BPE_DIR / "encoder.json", src / "vocab.json")
    shutil.copyfile(GPT2_BPE_DIR / "vocab.bpe", src / "merges.txt")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def download(repo_id, allow_patterns):
        calls.append(repo_id)
        return str(src)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    model = GPT2.from_pretrained("distilgpt2")
    np.testing.assert_array_equal(model(IDS), GPT2.from_pretrained(folder)(IDS))
    assert calls == ["distilbert/distilgpt2"]
    assert sorted(os.listdir(weights / "distilgpt2")) == [
        "config.json", "merges.txt", "model.safetensors", "vocab.json"]
    GPT2.from_pretrained("distilgpt2")              # now bundled: no second download
    assert calls == ["distilbert/distilgpt2"]
    from minipeft import load_tokenizer
    assert load_tokenizer("distilgpt2").encode("Hello world").ids == [15496, 995]
