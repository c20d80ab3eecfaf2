"""Backward reads only its cache (issue 16 §2): running forward with adapter "a", then
``set_adapter("b")``, then backward gives exactly the gradients of a run without the
switch, for every method. Adapter "b" differs from "a" in its values and in its config
(rank, slices, prefix length, placement), so a backward that read the active adapter, or
its config, at backward time would give other numbers or fail on the shapes.

Tolerance: 0, bit for bit: both runs do the same operations on the same arrays.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import TINY as CFG
from conftest import TINY_IDS as IDS
from conftest import tiny_gpt2

from minipeft import (
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)

PAIRS = {   # (config of "a", config of "b"): the same method, other shapes and settings
    "lora": (LoraConfig(r=2, lora_dropout=0.25, use_dora=True, target_modules="all-linear",
                        init_lora_weights=False, fan_in_fan_out=True),
             LoraConfig(r=3, lora_alpha=5, target_modules=["c_attn"], enable_lora=[True, False, True],
                        fan_in_fan_out=True)),
    "ia3": (IA3Config(init_ia3_weights=False, fan_in_fan_out=True),
            IA3Config.paper(fan_in_fan_out=True)),
    "prefix": (PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True),
               PrefixTuningConfig(num_virtual_tokens=5, convention="adapters")),
    "prompt": (PromptTuningConfig(num_virtual_tokens=3), PromptTuningConfig(num_virtual_tokens=4)),
    "bottleneck": (BottleneckConfig(preset="houlsby", reduction_factor=4, scaling="learned",
                                    dropout=0.25),
                   BottleneckConfig(preset="pfeiffer", reduction_factor=2)),
}


def two_adapters(method):
    """A model with adapters "a" (active) and "b", both with random values, in training mode."""
    config_a, config_b = PAIRS[method]
    base = tiny_gpt2().astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(base, config_a, adapter_name="a", seed=1)
        pm.add_adapter("b", config_b, seed=2)
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        for key, arr in pm._adapter_arrays(name).items():
            arr[...] = 0.3 * rng.standard_normal(arr.shape) + (1.0 if key.endswith("ia3_l") else 0.0)
    pm.set_adapter("a")
    return pm


def gradients(pm, switch: bool, dlogits):
    pm.train(seed=7)                                   # the same dropout masks in both runs
    logits, cache = pm.forward(IDS)
    if switch:
        pm.set_adapter("b")
    grads = pm.backward(dlogits, cache)
    pm.set_adapter("a")
    return grads


@pytest.mark.parametrize("method", sorted(PAIRS))
@pytest.mark.parametrize("use_kernels", [False, True])
def test_set_adapter_between_forward_and_backward_changes_nothing(method, use_kernels):
    pm = two_adapters(method)
    pm.use_kernels = use_kernels
    dlogits = np.random.default_rng(4).standard_normal(IDS.shape + (CFG.vocab_size,))  # random dout
    plain = gradients(pm, False, dlogits)
    switched = gradients(pm, True, dlogits)
    assert plain and sorted(plain) == sorted(switched)
    assert sorted(plain) == sorted(pm.trainable_parameters())      # "a"'s tensors, by name
    for name, g in plain.items():
        assert np.array_equal(g, switched[name]), name
