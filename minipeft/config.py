"""GPT-2's hyper-parameters as a dataclass, with the names of `transformers`.

The same six numbers describe every GPT-2 size: 124M is (12, 12, 768), medium
(24, 16, 1024), large (36, 20, 1280), xl (48, 25, 1600).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .io.jsonfile import read_json

# Fields of a Hugging Face GPT2Config whose non-default values change the maths
# of the model; minipeft refuses them rather than compute something else.
_HF_UNSUPPORTED = {
    "activation_function": ("gelu_new",),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "tie_word_embeddings": (True,),
    "add_cross_attention": (False,),
}


def refuse_unknown_fields(cls):
    """Class decorator for a config dataclass: a keyword it lacks (a typo such as
    ``LoraConfig(rank=8)``) is a ConfigError naming the fields, not a bare TypeError."""
    init, fields = cls.__init__, [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        unknown = [k for k in kwargs if k not in fields]
        if unknown:
            close = difflib.get_close_matches(unknown[0], fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{cls.__name__} has no field {unknown[0]!r}.{hint} Its fields: "
                              f"{', '.join(fields)}.")
        init(self, *args, **kwargs)
    cls.__init__ = __init__
    return cls


MAX_PARAMETERS = 10**12    # 4 TiB of float32 weights: 600x gpt2-xl, more than any machine holds
MAX_LAYERS = 10_000        # gpt2-xl has 48 blocks; the bound keeps a loop over blocks finite


def _size(n: int) -> str:
    """An integer for a message: as it is up to 1e6, else 1.23e+15, else 10^k."""
    return str(n) if n < 10**6 else f"{n:.3g}" if n < 10**300 else f"about 10^{len(str(n)) - 1}"


@refuse_unknown_fields
@dataclass(frozen=True)
class GPT2Config:
    n_layer: int = 12                  # transformer blocks
    n_head: int = 12                   # attention heads per block
    n_embd: int = 768                  # residual width C
    n_positions: int = 1024            # longest sequence (learned positions)
    vocab_size: int = 50257            # tokens V (lm_head tied to wte)
    layer_norm_epsilon: float = 1e-5
    n_inner: int | None = None         # MLP width; None means 4 * n_embd

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"GPT2Config.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "each head gets n_embd / n_head channels.")
        eps = self.layer_norm_epsilon
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0:
            raise ConfigError(f"layer_norm_epsilon must be a number > 0, got {eps!r}.")
        n_inner = self.n_inner
        if n_inner is not None and (not isinstance(n_inner, int) or isinstance(n_inner, bool)
                                    or n_inner <= 0):
            raise ConfigError(f"n_inner must be a positive integer or None, got {self.n_inner!r}.")
        # A config.json can hold any integer: refuse a model no machine holds before
        # anything loops over its blocks or allocates its tensors.
        if self.n_layer > MAX_LAYERS or self.num_parameters() > MAX_PARAMETERS:
            raise ConfigError(
                f"GPT2Config(n_layer={_size(self.n_layer)}, n_embd={_size(self.n_embd)}, "
                f"vocab_size={_size(self.vocab_size)}, n_positions={_size(self.n_positions)}) "
                f"describes {_size(self.num_parameters())} parameters; minipeft "
                f"takes at most {MAX_PARAMETERS:.0e} parameters ({MAX_PARAMETERS * 4 / 2**40:.0f} "
                f"TiB in float32) and {MAX_LAYERS:,} blocks (gpt2-xl: 1.6e9 in 48). Check the "
                "config's sizes.")

    def num_parameters(self) -> int:
        """GPT-2's parameter count from the sizes alone (lm_head tied to wte)."""
        C, F = self.n_embd, self.inner_size
        block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C)
        return self.vocab_size * C + self.n_positions * C + self.n_layer * block + 2 * C

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPT2Config":
        """From minipeft's own config.json or a Hugging Face GPT-2 config.json."""
        if not isinstance(d, dict):
            raise ConfigError(f"A GPT-2 config must be a JSON object, got {type(d).__name__}.")
        if "model_type" in d or "architectures" in d:
            return cls.from_hf_dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"Unknown GPT-2 config field(s) {unknown}; the fields are {sorted(names)}.")
        return cls(**d)

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GPT2Config":
        """From a Hugging Face config.json; refuses anything that is not GPT-2."""
        model_type = d.get("model_type")
        if model_type != "gpt2":
            raise ConfigError(
                f"This is not a GPT-2 checkpoint: config.json has model_type={model_type!r} "
                "(architectures=" f"{d.get('architectures')!r}). minipeft implements GPT-2 only "
                "(gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 and GPT-2-shaped models).")
        for key, allowed in _HF_UNSUPPORTED.items():
            if key in d and d[key] not in allowed:
                raise ConfigError(
                    f"config.json sets {key}={d[key]!r}; minipeft's GPT-2 supports only "
                    f"{allowed[0]!r} for it. Use a standard GPT-2 checkpoint.")
        try:
            return cls(
                n_layer=d.get("n_layer", 12), n_head=d.get("n_head", 12),
                n_embd=d.get("n_embd", 768), n_positions=d.get("n_positions", 1024),
                vocab_size=d.get("vocab_size", 50257),
                layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
                n_inner=d.get("n_inner"))
        except TypeError as e:  # pragma: no cover - defensive
            raise ConfigError(f"Cannot read GPT-2 config: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "GPT2Config":
        """From a config.json, read by the one JSON reader (``io.jsonfile.read_json``):
        a file that is missing, not UTF-8, not JSON, nested too deep, holding NaN or
        an endless integer, or not an object is a ConfigError naming it."""
        d = read_json(path, expect=dict, error=ConfigError,
                      fix="It should be a GPT-2 config.json (a JSON object); save or convert "
                          "the model again.")
        return cls.from_dict(d)
