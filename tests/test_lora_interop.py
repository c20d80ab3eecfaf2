"""Adapters cross between peft and minipeft in peft's format, both ways; configs
round-trip; bad adapters and configs fail clearly; a failed save leaves nothing half-written.

Tolerances as in test_lora_vs_peft: float64 1e-10 (same math, other summation order),
float32 1e-4 (float32 sums in another order).
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
from test_lora_vs_peft import SMALL, make_pair

from minipeft import (
    GPT2,
    CheckpointError,
    ConfigError,
    LoraConfig,
    PeftModel,
    WeightsNotFoundError,
    get_peft_model,
)
from minipeft.testing import cmp

IDS = np.array([[3, 14, 15, 9, 2, 6, 5, 35], [8, 9, 7, 9, 3, 23, 8, 4]])


def torch_logits(pm_t, ids=IDS):
    import torch
    with torch.no_grad():
        return pm_t(torch.as_tensor(ids)).logits.numpy()


def base_model(folder, dtype):
    return GPT2.from_pretrained(folder).astype(dtype)


def quiet_peft(model, config, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config, **kw)


def randomize(pm, seed=0):
    rng = np.random.default_rng(seed)
    for name, a in pm.trainable_parameters().items():
        a[...] = 0.3 * rng.standard_normal(a.shape) + (1.0 if "magnitude" in name else 0.0)


PEFT_SAVED = {
    "plain-f64": (dict(r=4, lora_alpha=8, target_modules=["c_attn"]), "float64"),
    "dora-all-linear-f64": (dict(r=2, lora_alpha=4, target_modules="all-linear", use_dora=True), "float64"),
    "rslora-bias-all-f32": (dict(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_fc"],
                                 use_rslora=True, bias="all"), "float32"),
    "lora_only-layers-f32": (dict(r=3, lora_alpha=6, target_modules=["c_proj"], bias="lora_only",
                                  layers_to_transform=[0]), "float32"),
}
TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.mark.parametrize("case", list(PEFT_SAVED))
def test_peft_saved_adapter_loads_in_minipeft(hf_checkpoint, tmp_path, case):
    kwargs, dtype = PEFT_SAVED[case]
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, _ = make_pair(hf_model, kwargs, dtype)
    if kwargs.get("bias", "none") != "none":                    # trained biases travel too
        import torch
        with torch.no_grad():
            for n, p in pm_t.named_parameters():
                if n.endswith("bias") and p.requires_grad:
                    p.add_(0.05)
    pm_t.save_pretrained(tmp_path)
    pm = PeftModel.from_pretrained(base_model(folder, dtype), tmp_path)
    assert pm.trainable_parameters() == {}                      # peft's default: inference only
    assert cmp("logits", pm(IDS), torch_logits(pm_t), TOL[dtype]) <= TOL[dtype]
    trainable = PeftModel.from_pretrained(base_model(folder, dtype), tmp_path, is_trainable=True)
    assert len(trainable.trainable_parameters()) > 0


MINIPEFT_SAVED = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_proj"]),
    "dora-rslora": dict(r=2, lora_alpha=4, target_modules=["attn.c_proj", "mlp.c_fc"], use_dora=True,
                        use_rslora=True),
    "bias-all": dict(r=2, lora_alpha=4, target_modules=["c_attn"], bias="all"),
    "qv-slices": dict(r=2, lora_alpha=4, target_modules=["c_attn"], enable_lora=[True, False, True]),
    "qv-slices-rslora": dict(r=3, lora_alpha=4, target_modules=["c_attn"], enable_lora=[False, True, True],
                             use_rslora=True),
}


@pytest.mark.parametrize("case", list(MINIPEFT_SAVED))
def test_minipeft_saved_adapter_loads_in_peft(hf_checkpoint, tmp_path, case):
    import torch
    from peft import PeftModel as TorchPeftModel
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm = quiet_peft(base_model(folder, np.float64), LoraConfig(**MINIPEFT_SAVED[case]))
    randomize(pm)
    for name, a in pm.trainable_parameters().items():
        if name.endswith(".bias"):
            a += 0.05
    pm.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json",
                                                         "adapter_model.safetensors"]
    pm_t = TorchPeftModel.from_pretrained(copy.deepcopy(hf_model).to(torch.float64), tmp_path).eval()
    assert cmp("logits", torch_logits(pm_t), pm(IDS), 1e-10) <= 1e-10
    again = PeftModel.from_pretrained(base_model(folder, np.float64), tmp_path)
    assert cmp("reloaded", again(IDS), pm(IDS), 1e-12) <= 1e-12


def test_named_adapters_save_in_subfolders_and_configs_round_trip(hf_checkpoint, tmp_path):
    from peft import LoraConfig as TorchLoraConfig
    from peft import PeftConfig
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    pm = quiet_peft(base_model(folder, np.float32),
                    LoraConfig(r=4, lora_alpha=32, target_modules=["c_attn"], lora_dropout=0.1))
    pm.add_adapter("second", LoraConfig(r=2, target_modules=["c_attn", "c_proj", "c_fc"], use_dora=True,
                                        fan_in_fan_out=True, layers_to_transform=[1]))
    pm.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / "second" / "adapter_model.safetensors").is_file()
    for sub, ours in (("", pm.peft_config["default"]), ("second", pm.peft_config["second"])):
        theirs = PeftConfig.from_pretrained(tmp_path / sub)
        assert isinstance(theirs, TorchLoraConfig)
        for field in ("r", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias", "use_rslora",
                      "use_dora", "init_lora_weights", "layers_to_transform"):
            assert getattr(theirs, field) == getattr(ours, field), field
        assert sorted(theirs.target_modules) == sorted(
            [ours.target_modules] if isinstance(ours.target_modules, str) else ours.target_modules) \
            or theirs.target_modules == ours.target_modules
        back = LoraConfig.from_dict(theirs.to_dict())     # (to_dict sorts target_modules)
        assert back.to_dict() == {**ours.to_dict(), "inference_mode": theirs.inference_mode}
    loaded = PeftModel.from_pretrained(base_model(folder, np.float32), tmp_path)
    loaded.load_adapter(tmp_path / "second", "second")
    for name in ("default", "second"):
        pm.set_adapter(name)
        loaded.set_adapter(name)
        assert np.array_equal(loaded(IDS), pm(IDS))


@pytest.mark.parametrize("combination", ["linear", "cat", "svd"])
def test_add_weighted_adapter_equals_peft(hf_checkpoint, combination):
    import torch
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    kw = dict(r=3, lora_alpha=6, target_modules=["c_attn", "mlp.c_fc"])
    pm_t, pm = make_pair(hf_model, kw, "float64", seed=1)
    from peft import LoraConfig as TorchLoraConfig
    pm_t.add_adapter("b", TorchLoraConfig(**{**kw, "lora_alpha": 9}))
    pm.add_adapter("b", LoraConfig(**{**kw, "lora_alpha": 9, "fan_in_fan_out": True}))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in pm_t.named_parameters():
            if ".b." in n or n.endswith(".b.weight"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
                pm.lora["b"][n.split("base_model.model.")[1].rsplit(".lora_", 1)[0]][
                    "lora_" + n.rsplit(".lora_", 1)[1].replace(".b.", ".")][...] = p.numpy()
    pm_t.add_weighted_adapter(["default", "b"], [0.7, 1.3], "mix", combination_type=combination)
    pm_t.set_adapter("mix")
    pm.add_weighted_adapter(["default", "b"], [0.7, 1.3], "mix", combination_type=combination)
    pm.set_adapter("mix")
    assert cmp(f"{combination} logits", pm(IDS), torch_logits(pm_t.eval()), 1e-10) <= 1e-10


# ------------------------------------------------------------------ errors
def small_peft(folder, **kw):
    return quiet_peft(base_model(folder, np.float32), LoraConfig(**{"target_modules": ["c_attn"], **kw}))


@pytest.mark.parametrize("kwargs,match", [
    (dict(r=0), "r must be a positive integer"),
    (dict(r=-2), "r must be a positive integer"),
    (dict(r=2.5), "r must be a positive integer"),
    (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(bias="some"), "bias must be one of"),
    (dict(init_lora_weights="loftq"), "init_lora_weights"),
    (dict(target_modules=[]), "non-empty list"),
    (dict(layers_to_transform=[-1]), "layers_to_transform"),
    (dict(enable_lora=[False, False, False]), "enable_lora"),
    (dict(enable_lora=[True, False, True], use_dora=True), "cannot be combined"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LoraConfig(**kwargs)


@pytest.mark.parametrize("targets,match", [
    (["q_proj"], "'q_proj' is not a linear layer of GPT-2"),
    (["c_attn", "lm_head"], "'lm_head' is not a linear layer"),
    (r"transformer\.h\.9\..*", "matches no module"),
])
def test_unknown_target_module(hf_checkpoint, targets, match):
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    with pytest.raises(ConfigError, match=match):
        small_peft(folder, target_modules=targets)
    with pytest.raises(ConfigError, match="layers_to_transform"):
        small_peft(folder, layers_to_transform=[5])


def test_adapter_for_another_model_size_or_depth(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    small_peft(folder).save_pretrained(tmp_path)
    wider, _ = hf_checkpoint(seed=3, **{**SMALL, "n_embd": 30})
    with pytest.raises(CheckpointError, match="another model size"):
        PeftModel.from_pretrained(base_model(wider, np.float32), tmp_path)
    shallower, _ = hf_checkpoint(seed=3, **{**SMALL, "n_layer": 1})
    with pytest.raises(CheckpointError, match="saved for another model"):
        PeftModel.from_pretrained(base_model(shallower, np.float32), tmp_path)


def test_corrupt_missing_and_unhonourable_adapters(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    base = base_model(folder, np.float32)
    with pytest.raises(WeightsNotFoundError, match="No adapter_config.json"):
        PeftModel.from_pretrained(base, tmp_path / "nowhere")
    small_peft(folder).save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])                 # truncated
    with pytest.raises(CheckpointError, match="corrupt, truncated or not safetensors"):
        PeftModel.from_pretrained(base, tmp_path)
    weights.write_bytes(good)
    cfg_path = tmp_path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    for field, value, match in [("use_qalora", True, "cannot honour: use_qalora"),
                                ("rank_pattern", {"c_attn": 2}, "rank_pattern"),
                                ("some_future_option", 3, "unknown to minipeft"),
                                ("peft_type", "VERA", "peft_type .VERA., which minipeft does not implement"),
                                # an adapter made for another architecture (LLaMA's names)
                                ("target_modules", ["q_proj", "v_proj"], "not a linear layer of GPT-2")]:
        cfg_path.write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(ConfigError, match=match):
            PeftModel.from_pretrained(base, tmp_path)
    cfg_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PeftModel.from_pretrained(base, tmp_path)
    cfg_path.write_text(json.dumps(cfg))
    weights.unlink()
    with pytest.raises(WeightsNotFoundError, match="No adapter_model.safetensors"):
        PeftModel.from_pretrained(base, tmp_path)


def test_failed_save_leaves_the_previous_adapter_whole(hf_checkpoint, tmp_path, monkeypatch):
    import safetensors.numpy
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    pm = small_peft(folder)
    pm.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    randomize(pm)

    def half_then_fail(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.numpy, "save_file", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        pm.save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # no temp files either
