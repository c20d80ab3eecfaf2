"""What each method trains on GPT-2 124M: the formula, the count of the real 124M shape,
and the README's table agree."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from minipeft import (
    GPT2,
    BottleneckConfig,
    GPT2Config,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from minipeft.train.pretrain import init_params

README = Path(__file__).resolve().parents[1] / "README.md"
L, C, P, H = 12, 768, 20, 768


def bottleneck(m, places):
    return places * L * (2 * C * m + m + C)


ROWS = [  # (config, formula evaluated)
    (LoraConfig(r=8, target_modules=["c_attn"]), L * 8 * (C + 3 * C)),
    (IA3Config(), L * (3 * C + 4 * C)),
    (IA3Config.paper(), L * (2 * C + 4 * C)),
    (PrefixTuningConfig(num_virtual_tokens=P), P * 2 * L * C),
    (PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=True),
     P * C + C * H + H + H * 2 * L * C + 2 * L * C),
    (PromptTuningConfig(num_virtual_tokens=P), P * C),
    (BottleneckConfig(preset="pfeiffer"), bottleneck(C // 16, 1)),
    (BottleneckConfig(preset="houlsby"), bottleneck(C // 16, 2)),
    (BottleneckConfig(preset="parallel"), bottleneck(C // 2, 1)),
]


@pytest.fixture(scope="module")
def gpt2_124m():
    cfg = GPT2Config()
    return cfg, init_params(cfg, seed=0)


IDS = ["lora", "ia3", "ia3-paper", "prefix-flat", "prefix-mlp", "prompt", "pfeiffer", "houlsby",
       "parallel"]


@pytest.mark.parametrize("config,formula", ROWS, ids=IDS)
def test_count_equals_formula_and_readme(gpt2_124m, config, formula):
    cfg, params = gpt2_124m
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(GPT2(cfg, dict(params)), config)
    trainable = sum(a.size for a in pm.trainable_parameters().values())
    assert trainable == formula
    row = f"| {trainable:,} | {100 * trainable / pm.num_parameters():.4f} |"
    assert row in README.read_text(encoding="utf-8"), f"README's table lacks {row}"
