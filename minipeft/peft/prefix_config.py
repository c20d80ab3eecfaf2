"""PrefixTuningConfig: peft's prefix-tuning settings, checked when made.

``convention`` (minipeft's) says where the real tokens sit after the prefix: "peft"
(positions P .. P + T - 1, the prefix as a KV cache) or "adapters" (AdapterHub:
positions 0 .. T - 1); prefix_model.py runs both, docs/compatibility.md compares them.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from ..config import refuse_unknown_fields
from ..errors import ConfigError
from .config_base import checked_config, from_peft_dict, peft_dict

CONVENTIONS = ("peft", "adapters")
_UNUSED_PEFT_FIELDS = {"modules_to_save": None}
MODEL_FIELDS = (("num_layers", "n_layer"), ("token_dim", "n_embd"), ("num_attention_heads", "n_head"))


def _positive(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


@refuse_unknown_fields
@checked_config
@dataclass
class PrefixTuningConfig:
    """Prefix tuning's settings, as ``peft.PrefixTuningConfig`` (same names and defaults;
    task_type defaults to "CAUSAL_LM", the only one minipeft runs: with peft's None,
    peft's own model would ignore the prefix).

    num_virtual_tokens: P, the prefix length. prefix_projection: train through the MLP
    E (P, C) -> Linear(C, H) -> tanh -> Linear(H, 2LC), H = encoder_hidden_size (None:
    n_embd, as peft). init_weights "zero": the prefix (or the MLP's last layer) starts at 0.
    num_layers, token_dim, num_attention_heads, num_transformer_submodules: filled from
    the model by get_peft_model, as peft does. convention: minipeft's, "peft" or
    "adapters" (see the module docstring)."""
    num_virtual_tokens: int | None = None
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    init_weights: str | None = None
    convention: str = "peft"
    num_layers: int | None = None
    token_dim: int | None = None
    num_attention_heads: int | None = None
    num_transformer_submodules: int | None = None
    task_type: str | None = "CAUSAL_LM"
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    peft_type: str = field(default="PREFIX_TUNING", init=False)

    def __post_init__(self):
        if not _positive(self.num_virtual_tokens):
            raise ConfigError(f"PrefixTuningConfig num_virtual_tokens must be a positive integer (the "
                              f"prefix length P), got {self.num_virtual_tokens!r}; try 10 or 20.")
        for name in ("encoder_hidden_size", "num_layers", "token_dim", "num_attention_heads"):
            value = getattr(self, name)
            if value is not None and not _positive(value):
                raise ConfigError(f"PrefixTuningConfig {name} must be a positive integer or None "
                                  f"(None: from the model), got {value!r}.")
        if self.convention not in CONVENTIONS:
            raise ConfigError(f"PrefixTuningConfig convention must be 'peft' (the prefix as past "
                              f"keys/values, tokens at positions P..P+T-1) or 'adapters' (AdapterHub: "
                              f"tokens at 0..T-1), got {self.convention!r}.")
        if self.init_weights not in (None, "zero"):
            raise ConfigError(f"PrefixTuningConfig init_weights must be None (random) or 'zero', "
                              f"got {self.init_weights!r}.")
        if self.task_type not in ("CAUSAL_LM", None) or self.num_transformer_submodules not in (None, 1):
            raise ConfigError("minipeft's prefix tuning runs GPT-2 as a causal LM: task_type must be "
                              f"'CAUSAL_LM' and num_transformer_submodules 1, got {self.task_type!r} "
                              f"and {self.num_transformer_submodules!r}.")
        for name in ("prefix_projection", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"PrefixTuningConfig {name} must be True or False, got "
                                  f"{getattr(self, name)!r}.")

    @property
    def flat(self) -> bool:
        """Is the prefix itself the parameter? peft's rule: without projection, or loaded."""
        return not (self.prefix_projection and not self.inference_mode)

    def to_dict(self) -> dict:
        """peft's adapter_config.json; "convention" only when it is not peft's."""
        d = peft_dict(self, _UNUSED_PEFT_FIELDS, auto_mapping=None)
        if self.convention == "peft":
            del d["convention"]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "adapter config") -> "PrefixTuningConfig":
        return cls(**from_peft_dict(cls, d, source, _UNUSED_PEFT_FIELDS))
