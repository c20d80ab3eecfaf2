"""peft's semantics where minipeft follows peft, and the checks every method shares
(issue 12, §1, §3, §4): adapter names that stay inside their folder, sizes checked before
allocating, finite scales, field types from JSON, one adapter with bias, task_type,
merging twice / adapter_names / safe_merge / unload / disable on a merged model, deleting
the last adapter, pissa_niter_K, fresh randomness for a second adapter.

Tolerances: float64 logits against peft 1e-10 (same math, other summation order, as in
test_lora_vs_peft); float64 merged-versus-unmerged 1e-12 (W + Δ rounds once per entry).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
from conftest import TINY as CFG
from conftest import TINY_IDS as IDS
from conftest import tiny_gpt2

from minipeft import (
    GPT2,
    BottleneckConfig,
    ConfigError,
    IA3Config,
    LoraConfig,
    MinipeftError,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from minipeft.peft import base as peft_base
from minipeft.peft.base import check_adapter_name
from minipeft.testing import max_rel


def tiny(seed=0, dtype=np.float64) -> GPT2:
    return tiny_gpt2(seed).astype(dtype)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def lora(model=None, name="default", **config) -> PeftModel:
    config = {"r": 2, "target_modules": "all-linear", **config}
    return quiet(get_peft_model, model or tiny(), LoraConfig(**config), adapter_name=name)


def randomize(pm, adapter=None, seed=0, scale=0.3):
    """Random values in an adapter's tensors (B = 0 would hide most of what is tested)."""
    rng = np.random.default_rng(seed)
    for key, a in pm._adapter_arrays(adapter or pm.active_adapter).items():
        a[...] = scale * rng.standard_normal(a.shape) + (1.0 if key.endswith("ia3_l") else 0.0)


METHODS = {   # one config per method, small, with a random start where the method has one
    "lora": lambda: LoraConfig(r=2, init_lora_weights=False, fan_in_fan_out=True),
    "ia3": lambda: IA3Config(init_ia3_weights=False, fan_in_fan_out=True),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=3),
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=3),
    "bottleneck": lambda: BottleneckConfig(reduction_factor=4),
}


# ================================================================== §1 adapter names
BAD_NAMES = ["/abs/elsewhere", "x/y", "..", ".", "", "   ", "a\\b", "nul\x00byte", "tab\tname",
             "C:evil", "dotted.name", "x" * 256, 3, None]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
def test_check_adapter_name_refuses_what_is_not_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match=r"adapter name|must be a string"):
        check_adapter_name(name)


@pytest.mark.parametrize("name", ["default", "task_a", "Task-B 2", "ünïcødé", "x" * 255])
def test_plain_names_pass(name):
    assert check_adapter_name(name) == name


ENTRY_POINTS = {
    "get_peft_model": lambda pm, bad, t: lora(name=bad),
    "add_adapter": lambda pm, bad, t: quiet(pm.add_adapter, bad, LoraConfig(r=2)),
    "set_adapter": lambda pm, bad, t: pm.set_adapter(bad),
    "delete_adapter": lambda pm, bad, t: pm.delete_adapter(bad),
    "add_weighted_adapter": lambda pm, bad, t: pm.add_weighted_adapter(["default"], [1.0], bad),
    "save_pretrained": lambda pm, bad, t: pm.save_pretrained(t / "out", selected_adapters=[bad]),
    "from_pretrained": lambda pm, bad, t: PeftModel.from_pretrained(
        tiny(), pm.save_pretrained(t / "good"), adapter_name=bad),
    "load_adapter": lambda pm, bad, t: pm.load_adapter(pm.save_pretrained(t / "good"), bad),
    "merge_adapter": lambda pm, bad, t: pm.merge_adapter(adapter_names=[bad]),
    "merge_and_unload": lambda pm, bad, t: pm.merge_and_unload(adapter_names=[bad]),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("bad", ["/abs/elsewhere", "x/y", ".."])
def test_every_entry_point_refuses_a_bad_name(entry, bad, tmp_path):
    pm = lora()
    with pytest.raises(ConfigError, match=f"adapter name {bad!r} contains"):
        ENTRY_POINTS[entry](pm, bad, tmp_path)
    assert sorted(pm.peft_config) == ["default"]
    assert not (tmp_path / "out").exists()


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_nothing_is_written_outside_the_save_folder(tmp_path):
    """Even a name forced into the model's dicts (past add_adapter) is refused at save,
    before anything is written: the folder and its surroundings stay as they were."""
    pm = lora()
    quiet(pm.add_adapter, "task_a", LoraConfig(r=2))
    out = pm.save_pretrained(tmp_path / "out")
    assert tree(tmp_path) == ["out", "out/adapter_config.json", "out/adapter_model.safetensors",
                              "out/task_a", "out/task_a/adapter_config.json",
                              "out/task_a/adapter_model.safetensors"]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for bad in ("../escape", str(tmp_path / "abs"), "..", "a/../../b"):
        pm.peft_config[bad] = pm.peft_config["task_a"]
        pm.lora[bad] = pm.lora["task_a"]
        with pytest.raises(ConfigError, match="adapter name"):
            pm.save_pretrained(out)
        del pm.peft_config[bad], pm.lora[bad]
    assert tree(tmp_path) == ["out", "out/adapter_config.json", "out/adapter_model.safetensors",
                              "out/task_a", "out/task_a/adapter_config.json",
                              "out/task_a/adapter_model.safetensors"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_selected_adapters_must_be_a_list(tmp_path):
    pm = lora()
    with pytest.raises(ConfigError, match=r"selected_adapters must be a list.*\['default'\]"):
        pm.save_pretrained(tmp_path / "out", selected_adapters="default")


# ================================================================== §3 sizes, before allocating
HUGE = 10 ** 12


@pytest.mark.parametrize("method,config", [
    ("lora-r", lambda: LoraConfig(r=HUGE, fan_in_fan_out=True)),
    ("lora-r-dora", lambda: LoraConfig(r=HUGE, use_dora=True, fan_in_fan_out=True)),
    ("prefix-encoder_hidden_size", lambda: PrefixTuningConfig(
        num_virtual_tokens=2, prefix_projection=True, encoder_hidden_size=HUGE)),
    ("prefix-num_virtual_tokens", lambda: PrefixTuningConfig(num_virtual_tokens=HUGE,
                                                             convention="adapters")),
    ("bottleneck-tiny-reduction_factor", lambda: BottleneckConfig(reduction_factor=1e-12)),
    ("bottleneck-per-layer-factor", lambda: BottleneckConfig(reduction_factor={"1": 1e-12,
                                                                                "default": 4})),
])
def test_sizes_no_memory_can_hold_are_refused_before_allocating(method, config):
    with pytest.raises(ConfigError, match=r"would need [\d,]+ values = [\d,]+ bytes "
                                          r"\([\d.,]+ [KMGTPE]iB\) .*more "
                                          r"than this machine's memory .*choose smaller sizes"):
        quiet(get_peft_model, tiny(), config())


def test_a_factor_so_small_the_bottleneck_overflows():
    with pytest.raises(ConfigError, match=r"reduction_factor 5e-324 makes a bottleneck of .*inf"):
        get_peft_model(tiny(), BottleneckConfig(reduction_factor=5e-324))


def test_the_bound_is_the_machine_memory_and_the_message_has_the_bytes(monkeypatch):
    """LoRA r=2 on all 8 linear layers of CFG: A (2, in) + B (out, 2) per layer, float64."""
    n = 2 * sum(2 * (i + o) for i, o in [(8, 24), (8, 8), (8, 32), (32, 8)])
    monkeypatch.setattr(peft_base, "_memory_bytes", lambda: 8 * n)
    lora()                                                    # exactly at the bound: fits
    monkeypatch.setattr(peft_base, "_memory_bytes", lambda: 8 * n - 1)
    with pytest.raises(ConfigError, match=f"would need {n:,} values = {8 * n:,} bytes"):
        lora()


def test_the_real_bound_is_positive_and_finite():
    assert 0 < peft_base._memory_bytes() < 1 << 60


# ================================================================== §3 finite, sensible scales
NON_FINITE = [
    (LoraConfig, dict(lora_alpha=math.inf)), (LoraConfig, dict(lora_alpha=-math.inf)),
    (LoraConfig, dict(lora_alpha=math.nan)), (LoraConfig, dict(lora_dropout=math.nan)),
    (LoraConfig, dict(lora_alpha=np.float32("inf"))),
    (BottleneckConfig, dict(scaling=math.nan)), (BottleneckConfig, dict(scaling=math.inf)),
    (BottleneckConfig, dict(reduction_factor=math.inf)),
    (BottleneckConfig, dict(reduction_factor=math.nan)),
    (BottleneckConfig, dict(reduction_factor={"default": math.nan})),
    (BottleneckConfig, dict(dropout=math.nan)),
]


@pytest.mark.parametrize("cls,kwargs", NON_FINITE, ids=[f"{c.__name__}-{k}" for c, k in NON_FINITE])
def test_non_finite_numbers_are_refused_when_the_config_is_made(cls, kwargs):
    with pytest.raises(ConfigError, match=rf"{cls.__name__} {next(iter(kwargs))} is .*finite"):
        cls(**kwargs)


@pytest.mark.parametrize("cls,kwargs,match", [
    (LoraConfig, dict(lora_alpha=0), "lora_alpha must be a positive number"),
    (LoraConfig, dict(lora_alpha=-2), "lora_alpha must be a positive number"),
    (BottleneckConfig, dict(scaling=0), r"scaling=0 multiplies the adapter's output by 0"),
    (BottleneckConfig, dict(reduction_factor=-1), "reduction_factor must be a number > 0"),
])
def test_meaningless_scales_are_refused(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


def test_a_field_set_after_the_config_was_made_is_checked_when_the_adapter_is_made():
    config = LoraConfig(r=2, fan_in_fan_out=True)
    config.lora_alpha = math.nan
    with pytest.raises(ConfigError, match="lora_alpha is nan"):
        get_peft_model(tiny(), config)
    config = BottleneckConfig()
    config.scaling = math.inf
    with pytest.raises(ConfigError, match="scaling is inf"):
        get_peft_model(tiny(), config)


def test_non_finite_numbers_in_a_saved_config_are_refused(tmp_path):
    """JSON has no NaN, but 1e999 parses as infinity."""
    folder = lora().save_pretrained(tmp_path / "a")
    text = (folder / "adapter_config.json").read_text()
    d = json.loads(text)
    d["lora_alpha"] = 8
    (folder / "adapter_config.json").write_text(json.dumps(d).replace('"lora_alpha": 8',
                                                                      '"lora_alpha": 1e999'))
    with pytest.raises(ConfigError, match="lora_alpha is inf"):
        PeftModel.from_pretrained(tiny(), folder)


# ================================================================== §4 of the issue: JSON files
def saved_config(tmp_path, text: str | bytes):
    folder = lora().save_pretrained(tmp_path / "a")
    path = folder / "adapter_config.json"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


def good_dict(**change):
    d = lora().peft_config["default"].to_dict()
    d.update(change)
    return json.dumps(d)


MALFORMED = {
    "nested-too-deep": ("[" * 100_000 + "]" * 100_000, r"nests JSON too deeply"),
    "giant-integer": (good_dict().replace('"r": 2', '"r": 1' + "0" * 5000),
                      r"integer too long to read"),
    "a-list-at-the-top": ("[1, 2]", r"must hold a JSON object \(\{\.\.\.\}\) at the top, got a JSON array"),
    "not-json": ("{oops", r"is not valid JSON"),
    "empty": ("", r"is empty"),
    "not-utf8": (b'{"r": "\xff"}', r"is not UTF-8"),
    "NaN-literal": (good_dict().replace('"r": 2', '"r": NaN'), r"JSON has no NaN"),
    "r-a-string": (good_dict(r="8"), r"r must be a positive integer .*got '8'"),
    "r-a-float": (good_dict(r=8.0), r"r must be a positive integer .*got 8\.0"),
    "use_rslora-a-list": (good_dict(use_rslora=[True]), r"use_rslora must be True or False"),
    "bias-a-list": (good_dict(bias=["none"]), r"bias must be one of"),
    "target_modules-an-object": (good_dict(target_modules={"c_attn": 1}),
                                 r"target_modules must be a non-empty list"),
    "lora_alpha-a-string": (good_dict(lora_alpha="8"), r"lora_alpha must be a positive number"),
    "task_type-a-number": (good_dict(task_type=3), r"task_type must be a string or null \(None\), "
                                                   r"got 3 \(an integer\)"),
    "base_model-a-list": (good_dict(base_model_name_or_path=["gpt2"]),
                          r"base_model_name_or_path must be a string or null \(None\), got \['gpt2'\] "
                          r"\(a JSON array"),
    "peft_type-a-list": (good_dict(peft_type=["LORA"]), r"peft_type \['LORA'\], which minipeft does "
                                                        r"not implement"),
    "init-an-object": (good_dict(init_lora_weights={"pissa": 1}), r"init_lora_weights must be one of"),
    "layers-strings": (good_dict(layers_to_transform=["0"]), r"layers_to_transform must be"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_adapter_config_is_one_config_error(tmp_path, case):
    text, match = MALFORMED[case]
    folder = saved_config(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        PeftModel.from_pretrained(tiny(), folder)
    assert isinstance(info.value, MinipeftError)


def test_a_saved_rank_no_memory_can_hold_is_refused_before_allocating(tmp_path):
    """r = 10^30 in the file: the saved tensors (r = 2) do not fit it, which is said before
    any adapter is made."""
    folder = saved_config(tmp_path, good_dict(r=10 ** 30))
    with pytest.raises(MinipeftError, match=r"has shape \(2, 8\), this model needs "
                                            r"\(1000000000000000000000000000000, 8\)"):
        PeftModel.from_pretrained(tiny(), folder)


FIELD_VALUES = ["8", 8, 8.5, -1, 0, True, None, [], [1], ["x"], {}, {"a": 1}, [[[]]], 10 ** 30]


@pytest.mark.parametrize("cls", [LoraConfig, IA3Config, PrefixTuningConfig, PromptTuningConfig,
                                 BottleneckConfig])
def test_any_json_value_in_any_field_is_accepted_or_a_config_error(cls):
    """Every field of every config, given every kind of JSON value: the config is made,
    or refused with a ConfigError; never a TypeError or another crash."""
    base = {"num_virtual_tokens": 3} if cls in (PrefixTuningConfig, PromptTuningConfig) else {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        for value in FIELD_VALUES:
            d = {**base, f.name: value}
            try:
                config = cls.from_dict(d, source="adapter_config.json")
            except ConfigError:
                continue
            json.dumps(config.to_dict())                     # what was accepted can be saved


# ================================================================== §4 peft's semantics
@pytest.mark.parametrize("kwargs,match", [
    (dict(adapters="default", weights=[1.0]), "add_weighted_adapter takes lists"),
    (dict(adapters=[], weights=[]), "add_weighted_adapter takes lists"),
    (dict(adapters=["default"], weights=[math.nan]), "weights must be finite numbers, got nan"),
    (dict(adapters=["default"], weights=["1"]), "weights must be finite numbers, got '1'"),
    (dict(adapters=["default"], weights=[1.0], svd_rank="4"), "svd_rank must be a positive integer"),
    (dict(adapters=["default"], weights=[1.0], svd_rank=0), "svd_rank must be a positive integer"),
    (dict(adapters=["default"], weights=[1.0], svd_clamp=2.0), r"svd_clamp is a quantile in \[0, 1\]"),
])
def test_add_weighted_adapter_arguments(kwargs, match):
    pm = lora()
    with pytest.raises(ConfigError, match=match):
        pm.add_weighted_adapter(adapter_name="mix", **kwargs)
    assert sorted(pm.peft_config) == ["default"]


def test_a_second_adapter_with_bias_is_refused_as_peft_does(tmp_path):
    pm = lora(bias="all")
    for bias in ("all", "lora_only"):
        with pytest.raises(ConfigError, match=r"adapter 'default' already trains biases.*supports "
                                              r"only 1 adapter with bias, as peft"):
            quiet(pm.add_adapter, "other", LoraConfig(r=2, bias=bias))
    quiet(pm.add_adapter, "plain", LoraConfig(r=2))                # bias="none": fine
    with pytest.raises(ConfigError, match="supports only 1 adapter with bias"):
        pm.load_adapter(lora(bias="lora_only").save_pretrained(tmp_path / "b"), "loaded")
    with pytest.raises(ConfigError, match="supports only 1 adapter with bias"):
        pm.add_weighted_adapter(["default"], [1.0], "weighted")      # copies default's bias
    assert sorted(pm.peft_config) == ["default", "plain"]


def test_peft_refuses_the_same_second_adapter():
    """The rule is peft's own (tuners_utils.BaseTuner._check_new_adapter_config)."""
    from peft import LoraConfig as TorchLoraConfig
    from peft import get_peft_model as torch_get_peft_model
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel
    tm = GPT2LMHeadModel(HFConfig(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=20))
    pm_t = quiet(torch_get_peft_model, tm, TorchLoraConfig(r=2, bias="all"))
    with pytest.raises(ValueError, match="supports only 1 adapter with bias"):
        quiet(pm_t.add_adapter, "other", TorchLoraConfig(r=2, bias="lora_only"))


@pytest.mark.parametrize("cls", [LoraConfig, IA3Config])
def test_task_type_is_checked_as_prefix_and_prompt_check_it(cls):
    from peft import TaskType
    assert cls(task_type="CAUSAL_LM").task_type == "CAUSAL_LM"
    assert cls(task_type=TaskType.CAUSAL_LM).task_type == "CAUSAL_LM"   # peft's enum, saved as str
    with pytest.raises(ConfigError, match=r"task_type 'CAUSAL' is not one of peft's task types "
                                          r"\(SEQ_CLS, .*CAUSAL_LM.*\).*use 'CAUSAL_LM' or None"):
        cls(task_type="CAUSAL")
    with pytest.raises(ConfigError, match=r"task_type 'SEQ_CLS' is a peft task minipeft does not run"):
        cls(task_type="SEQ_CLS")


# ------------------------------------------------------------------ deleting the last adapter
@pytest.mark.parametrize("method", list(METHODS))
def test_after_the_last_adapter_is_deleted(method, tmp_path, capsys):
    pm = quiet(get_peft_model, tiny(), METHODS[method]())
    pm.delete_adapter("default")
    assert pm.trainable_parameters() == {} and pm.active_adapter is None
    pm.print_trainable_parameters()
    assert capsys.readouterr().out.startswith("trainable params: 0 || all params: ")
    for call in (lambda: pm(IDS), lambda: pm.loss_and_grads(IDS, IDS), lambda: pm.active_peft_config,
                 lambda: pm.save_pretrained(tmp_path / "x"), lambda: pm.set_adapter("default")):
        with pytest.raises(ConfigError, match=r"no adapter (left|named 'default')|no adapter to save"):
            call()
    assert not (tmp_path / "x").exists()
    if hasattr(pm, "merge_adapter"):
        with pytest.raises(ConfigError, match="no adapter left"):
            pm.merge_adapter()
    quiet(pm.add_adapter, "again", METHODS[method]())
    assert pm.active_adapter == "again" and pm.trainable_parameters()
    assert pm(IDS).shape == (2, 5, CFG.vocab_size)


# ------------------------------------------------------------------ pissa_niter_K
def test_pissa_niter_k_is_accepted_and_keeps_the_output():
    base = tiny()
    ref = base(IDS)
    pm = lora(tiny(), init_lora_weights="pissa_niter_4")
    assert max_rel(pm(IDS), ref)[1] < 1e-12            # float64: W_res + s·BA = W, rounded once
    assert pm.peft_config["default"].init_lora_weights == "pissa_niter_4"
    for bad in ("pissa_niter_", "pissa_niter_x", "pissa_niter_-1", "pissa_niter_٣", "pissa4"):
        with pytest.raises(ConfigError, match=r"init_lora_weights must be one of .*'pissa_niter_K'"):
            LoraConfig(init_lora_weights=bad)


def test_pissa_niter_k_round_trips_through_a_save(tmp_path):
    pm = lora(init_lora_weights="pissa_niter_2")
    back = PeftModel.from_pretrained(GPT2(CFG, dict(pm.params)), pm.save_pretrained(tmp_path / "a"))
    assert max_rel(back(IDS), pm(IDS))[1] == 0.0


# ------------------------------------------------------------------ a second adapter's start
@pytest.mark.parametrize("method", list(METHODS))
def test_a_second_adapter_without_a_seed_starts_elsewhere_and_seeds_repeat(method):
    def arrays(pm, name):
        return [a.copy() for a in pm._adapter_arrays(name).values()]

    def model(seed=0):
        pm = quiet(get_peft_model, tiny(), METHODS[method](), seed=seed)
        quiet(pm.add_adapter, "second", METHODS[method]())
        quiet(pm.add_adapter, "third", METHODS[method]())
        quiet(pm.add_adapter, "seeded", METHODS[method](), seed=7)
        return pm
    def same(a, b):                        # all tensors equal (some inits hold fixed zeros / ones)
        return all(np.array_equal(x, y) for x, y in zip(a, b))
    pm, again = model(), model()
    first, second, third = (arrays(pm, n) for n in ("default", "second", "third"))
    assert not same(first, second) and not same(second, third) and not same(first, third)
    for name in ("default", "second", "third", "seeded"):        # the same run twice: the same
        assert same(arrays(pm, name), arrays(again, name))
    other = model(seed=1)
    assert same(arrays(pm, "seeded"), arrays(other, "seeded"))
    assert not same(first, arrays(other, "default"))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ConfigError, match="seed must be an integer >= 0 or None"):
        quiet(get_peft_model, tiny(), LoraConfig(r=2), seed=seed)
    pm = lora()
    with pytest.raises(ConfigError, match="seed must be an integer >= 0 or None"):
        quiet(pm.add_adapter, "b", LoraConfig(r=2), seed=seed)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0 or None"):
        pm.train(seed=seed)


# ------------------------------------------------------------------ merging, as peft
MERGEABLE = {
    "lora": lambda: LoraConfig(r=2, target_modules="all-linear", fan_in_fan_out=True),
    "dora": lambda: LoraConfig(r=2, target_modules=["c_attn", "mlp.c_fc"], use_dora=True,
                               fan_in_fan_out=True),
    "qkv-slices": lambda: LoraConfig(r=2, target_modules=["c_attn"], enable_lora=[True, False, True],
                                     fan_in_fan_out=True),
    "ia3": lambda: IA3Config(fan_in_fan_out=True),
}


def two_adapters(method):
    pm = quiet(get_peft_model, tiny(), MERGEABLE[method]())
    quiet(pm.add_adapter, "other", MERGEABLE[method]())
    randomize(pm, "default", seed=1)
    randomize(pm, "other", seed=2)
    return pm


@pytest.mark.parametrize("method", list(MERGEABLE))
def test_merging_twice_warns_and_does_nothing(method):
    pm = two_adapters(method)
    adapted = pm(IDS)
    pm.merge_adapter()
    merged = dict(pm.params)
    with pytest.warns(UserWarning, match="All adapters are already merged, nothing to do"):
        pm.merge_adapter()
    assert all(pm.params[k] is v for k, v in merged.items()) and pm.merged == ["default"]
    assert max_rel(pm(IDS), adapted)[1] < 1e-12
    pm.unmerge_adapter()
    with pytest.warns(UserWarning, match="Already unmerged. Nothing to do"):
        pm.unmerge_adapter()


@pytest.mark.parametrize("method", list(MERGEABLE))
def test_disable_adapter_on_a_merged_model_runs_the_base_and_merges_back(method):
    pm = two_adapters(method)
    base = GPT2(CFG, {k: v.copy() for k, v in pm.params.items()})(IDS)
    pm.merge_adapter()
    merged, adapted = dict(pm.params), pm(IDS)
    with pm.disable_adapter():
        assert not pm.merged
        assert max_rel(pm(IDS), base)[1] < 1e-12                 # W + Δ − Δ, rounded
    assert pm.merged == ["default"]
    assert all(pm.params[k] is v for k, v in merged.items())     # the merged arrays, bit for bit
    assert np.array_equal(pm(IDS), adapted)


@pytest.mark.parametrize("method", list(MERGEABLE))
def test_adapter_names_merges_several_in_order_and_unmerges_them_all(method):
    pm = two_adapters(method)
    original = {k: v.copy() for k, v in pm.params.items()}
    one_by_one = pm.merge_and_unload(adapter_names=["default"])
    both = pm.merge_and_unload(adapter_names=["default", "other"])
    assert any(not np.array_equal(both.params[k], one_by_one.params[k]) for k in original)
    with pytest.warns(UserWarning, match="Already following adapters were merged default. You are "
                                         "now additionally merging other"):
        pm.merge_adapter()
        pm.merge_adapter(adapter_names=["default", "other"])
    assert pm.merged == ["default", "other"]
    for k in original:      # the same folds; DoRA's second norm is of W0 unmerged back (round-off)
        assert max_rel(pm.params[k], both.params[k])[1] <= (1e-12 if method == "dora" else 0.0), k
    pm.unmerge_adapter()
    assert pm.merged == []
    tol = 1e-11 if method == "dora" else 1e-12    # float64; DoRA also scales by m/‖·‖ twice each way
    for k, v in original.items():
        assert max_rel(pm.params[k], v)[1] < tol, k
    for bad, match in [("default", r"adapter_names must be a list of adapter names, e\.g\. "
                                   r"\['default'\]"),
                       (["default", "default"], "names an adapter twice"),
                       (["nope"], r"no adapter named 'nope'")]:
        with pytest.raises(ConfigError, match=match):
            pm.merge_adapter(adapter_names=bad)
        with pytest.raises(ConfigError, match=match):
            pm.merge_and_unload(adapter_names=bad)


@pytest.mark.parametrize("method", list(MERGEABLE))
def test_safe_merge_refuses_non_finite_weights_and_changes_nothing(method):
    pm = two_adapters(method)
    arrays = pm._adapter_arrays("other")
    next(iter(arrays.values())).flat[0] = np.nan
    before = {k: (v, v.copy()) for k, v in pm.params.items()}
    for call in (lambda: pm.merge_adapter(adapter_names=["default", "other"], safe_merge=True),
                 lambda: pm.merge_and_unload(safe_merge=True, adapter_names=["other"])):
        with pytest.raises(ConfigError, match=r"safe_merge: merging adapter 'other' gives [\d,]+ NaN "
                                              r"or infinite values in .*Nothing was merged"):
            call()
        assert pm.merged == []
        assert all(pm.params[k] is v and np.array_equal(v, c) for k, (v, c) in before.items())
    pm.merge_adapter(safe_merge=True)                             # the sound one merges
    assert pm.merged == ["default"]
    with pytest.raises(ConfigError, match="safe_merge must be True or False"):
        pm.merge_and_unload(safe_merge="yes")


@pytest.mark.parametrize("method", list(METHODS))
def test_unload_gives_the_base_model_back(method):
    model = tiny()
    ref = model(IDS)
    pm = quiet(get_peft_model, model, METHODS[method]())
    randomize(pm)
    assert not np.allclose(pm(IDS), ref)
    unloaded = pm.unload()
    assert unloaded is model and type(unloaded) is GPT2
    assert np.array_equal(unloaded(IDS), ref)


# ------------------------------------------------------------------ against peft itself
@pytest.fixture(scope="module")
def hf(hf_checkpoint):
    return hf_checkpoint(seed=5, n_layer=2, n_head=2, n_embd=8, n_positions=16, vocab_size=20)


def peft_pair(hf, method, tmp_path):
    """(peft model with two adapters, minipeft model with the same two) in float64."""
    import torch
    from peft import PeftModel as TorchPeftModel
    folder, hf_model = hf
    pm = quiet(get_peft_model, GPT2.from_pretrained(folder).astype(np.float64), MERGEABLE[method]())
    quiet(pm.add_adapter, "other", MERGEABLE[method]())
    randomize(pm, "default", seed=1)
    randomize(pm, "other", seed=2)
    saved = pm.save_pretrained(tmp_path / "pair")
    tm = copy.deepcopy(hf_model).to(torch.float64)
    pm_t = quiet(TorchPeftModel.from_pretrained, tm, saved)
    quiet(pm_t.load_adapter, saved / "other", "other")
    return pm_t.eval(), pm


def torch_logits(model):
    import torch
    with torch.no_grad():
        return model(torch.as_tensor(IDS)).logits.numpy()


@pytest.mark.parametrize("method", list(MERGEABLE))
def test_merge_and_unload_with_adapter_names_equals_peft(hf, method, tmp_path):
    pm_t, pm = peft_pair(hf, method, tmp_path)
    ours = pm.merge_and_unload(adapter_names=["default", "other"], safe_merge=True)(IDS)
    theirs = torch_logits(quiet(pm_t.merge_and_unload, adapter_names=["default", "other"],
                                safe_merge=True))
    assert max_rel(ours, theirs)[1] < 1e-10


@pytest.mark.parametrize("method", list(MERGEABLE))
def test_merge_adapter_twice_disable_and_unload_equal_peft(hf, method, tmp_path):
    """peft's IA3 unmerges by dividing by l + 1e-8 (its warning: "Unmerge result can be
    inaccurate"), so after an unmerge only LoRA and DoRA are held to peft's numbers; IA3's
    are held to the base model, which minipeft's exact division gives back."""
    pm_t, pm = peft_pair(hf, method, tmp_path)
    base = torch_logits(copy.deepcopy(hf[1]).double())
    exact = method != "ia3"
    for model in (pm_t, pm):
        quiet(model.merge_adapter)
        with pytest.warns(UserWarning, match="All adapters are already merged, nothing to do"):
            model.merge_adapter()
    assert max_rel(pm(IDS), torch_logits(pm_t))[1] < 1e-10
    with pm_t.disable_adapter(), pm.disable_adapter():
        assert max_rel(pm(IDS), base)[1] < 1e-10
        if exact:
            assert max_rel(pm(IDS), torch_logits(pm_t))[1] < 1e-10
    assert max_rel(pm(IDS), torch_logits(pm_t) if exact else pm.merge_and_unload()(IDS))[1] < 1e-10
    quiet(pm_t.unmerge_adapter)
    pm.unmerge_adapter()
    assert max_rel(pm.unload()(IDS), base)[1] < 1e-10
    if exact:
        assert max_rel(pm.unload()(IDS), torch_logits(pm_t.unload()))[1] < 1e-10

