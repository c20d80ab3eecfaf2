"""config.json is read by the one JSON reader, and GPT2Config refuses sizes no machine
holds before anything loops over the blocks or allocates a tensor (issue 12, §3)."""
from __future__ import annotations

import json
import time

import pytest

from minipeft import GPT2, ConfigError, GPT2Config
from minipeft.config import MAX_LAYERS, MAX_PARAMETERS
from minipeft.io.checkpoint import expected_shapes
from minipeft.train.pretrain import init_params

SMALL = dict(n_layer=2, n_head=2, n_embd=8, n_positions=16, vocab_size=20)

# What Python's json does with each of these: RecursionError, ValueError (int() limit),
# float('nan') accepted, UnicodeDecodeError, a list where an object is needed.
MALFORMED = {
    "nested too deep": (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply to read"),
    "integer too long": (b'{"n_layer": ' + b"7" * 5000 + b"}", "integer too long to read"),
    "NaN": (b'{"n_layer": 2, "layer_norm_epsilon": NaN}', "NaN is not JSON"),
    "Infinity": (b'{"layer_norm_epsilon": Infinity}', "Infinity is not JSON"),
    "not UTF-8": (b'{"model_type": "gpt\xe9"}', "is not UTF-8 text (byte 19 is 0xe9)"),
    "an array": (b"[2, 2, 8]", "must hold a JSON object ({...}) at the top, got a JSON array"),
    "a string": (b'"gpt2"', "must hold a JSON object ({...}) at the top, got a string"),
    "empty": (b"  \n", "is empty"),
    "truncated": (b'{"n_layer": 2, ', "is not valid JSON: Expecting property name"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_config_json_is_one_error_with_a_sentence(tmp_path, case):
    content, expected = MALFORMED[case]
    folder = GPT2(GPT2Config(**SMALL), init_params(GPT2Config(**SMALL))).save_pretrained(tmp_path / "m")
    (folder / "config.json").write_bytes(content)
    for load in (lambda: GPT2Config.from_json_file(folder / "config.json"),
                 lambda: GPT2.from_pretrained(folder)):
        with pytest.raises(ConfigError) as info:
            load()
        message = str(info.value)
        assert str(folder / "config.json") in message and expected in message, message
        assert message.endswith("save or convert the model again.")


@pytest.mark.parametrize("config", [
    dict(SMALL, n_layer=2, n_embd=64), dict(n_layer=12, n_head=12, n_embd=768),
    dict(SMALL, n_inner=24), dict(SMALL, vocab_size=50257),
])
def test_the_parameter_count_of_the_bound_is_the_models(config):
    cfg = GPT2Config(**config)
    assert cfg.num_parameters() == sum(int(__import__("math").prod(s))
                                       for s in expected_shapes(cfg).values())
    assert GPT2Config(n_layer=12, n_head=12, n_embd=768).num_parameters() == 124_439_808  # GPT-2 124M


@pytest.mark.parametrize("change, expected", [
    (dict(n_layer=10 ** 30), "GPT2Config(n_layer=1e+30,"),            # would loop over 10^30 blocks
    (dict(n_layer=MAX_LAYERS + 1, n_embd=2, n_head=1), f"{MAX_LAYERS:,} blocks"),
    (dict(n_embd=10 ** 7, n_head=1), "describes 2.4e+15 parameters"),   # 24 C^2 per block
    (dict(vocab_size=10 ** 400), "vocab_size=about 10^400"),
])
def test_sizes_no_machine_holds_are_refused_at_once(tmp_path, change, expected):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**SMALL, **change}))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="minipeft takes at most") as info:
        GPT2.from_pretrained(folder)
    assert time.perf_counter() - start < 5          # refused, not looped over nor allocated
    assert expected in str(info.value), str(info.value)


def test_the_largest_gpt2_is_well_inside_the_bound():
    xl = GPT2Config(n_layer=48, n_head=25, n_embd=1600)
    assert xl.num_parameters() == 1_557_611_200 and xl.num_parameters() * 600 < MAX_PARAMETERS
