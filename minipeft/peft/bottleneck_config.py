"""BottleneckConfig: AdapterHub's bottleneck-adapter settings, checked when made.

Config: AdapterHub's ``BnConfig`` field names and meanings, with presets

    "pfeiffer" = "seq_bn"         adapters.SeqBnConfig        after the MLP, relu, rf 16
    "houlsby"  = "double_seq_bn"  adapters.DoubleSeqBnConfig  after attention and MLP, swish, rf 16
    "parallel" = "par_bn"         adapters.ParBnConfig        parallel to the MLP, relu, rf 2, s = 4

``BottleneckConfig(preset="houlsby", reduction_factor=8)``: a field given overrides the
preset's value. AdapterHub options minipeft lacks (gating, PHM, invertible adapters,
stochastic depth) are refused by name when read from a file.
How it is saved (peft's two files, AdapterHub's tensor names): bottleneck_model.py;
where AdapterHub differs: docs/compatibility.md.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from ..config import refuse_unknown_fields
from ..errors import ConfigError
from . import bottleneck as twin
from .config_base import checked_config, from_peft_dict, peft_dict

_BN_DEFAULTS = dict(original_ln_before=False, original_ln_after=True, residual_before_ln=True,
                    adapter_residual_before_ln=False, ln_before=False, ln_after=False,
                    init_weights="bert", is_parallel=False, scaling=1.0)
_PFEIFFER = dict(_BN_DEFAULTS, original_ln_before=True, mh_adapter=False, output_adapter=True,
                 non_linearity="relu", reduction_factor=16)
_HOULSBY = dict(_BN_DEFAULTS, mh_adapter=True, output_adapter=True, non_linearity="swish",
                reduction_factor=16)
_PARALLEL = dict(_BN_DEFAULTS, mh_adapter=False, output_adapter=True, non_linearity="relu",
                 reduction_factor=2, init_weights="mam_adapter", is_parallel=True, scaling=4.0)
PRESETS = {"pfeiffer": _PFEIFFER, "seq_bn": _PFEIFFER, "houlsby": _HOULSBY,
           "double_seq_bn": _HOULSBY, "parallel": _PARALLEL, "par_bn": _PARALLEL}
# AdapterHub BnConfig fields minipeft does not implement, at their "off" values
_UNUSED_ADAPTERHUB_FIELDS = {
    "use_gating": False, "inv_adapter": None, "inv_adapter_reduction_factor": None,
    "cross_adapter": False, "phm_layer": False, "stochastic_depth": 0.0, "phm_dim": 4,
    "factorized_phm_W": True, "shared_W_phm": False, "shared_phm_rule": True,
    "factorized_phm_rule": False, "phm_c_init": "normal", "phm_init_range": 0.0001,
    "learn_phm": True, "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": True,
}
LOCATIONS = {"attn": ("attention_adapters", "mh_adapter"), "mlp": ("output_adapters", "output_adapter")}


@refuse_unknown_fields
@checked_config
@dataclass
class BottleneckConfig:
    """Bottleneck adapters with AdapterHub's names (adapters.BnConfig); see the module docstring.

    Fields left None take the preset's value. reduction_factor: a number > 0 (the
    bottleneck is int(n_embd // reduction_factor)) or {"layer": factor, "default": factor}.
    scaling: a number, "learned" (one trained number) or "channel" (one per channel).
    leave_out: layers without adapters. dropout: on the adapter's output, in training.
    preset: the AdapterHub configuration the fields left None come from; last, so that
    the fields keep the CONTRACT's order (reduction_factor, non_linearity, ...)."""
    reduction_factor: float | dict | None = None
    non_linearity: str | None = None
    mh_adapter: bool | None = None
    output_adapter: bool | None = None
    original_ln_before: bool | None = None
    original_ln_after: bool | None = None
    residual_before_ln: bool | None = None
    adapter_residual_before_ln: bool | None = None
    ln_before: bool | None = None
    ln_after: bool | None = None
    init_weights: str | None = None
    is_parallel: bool | None = None
    scaling: float | str | None = None
    init_weights_seed: int | None = None
    leave_out: list[int] = field(default_factory=list)
    dropout: float = 0.0
    preset: str = "pfeiffer"
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    peft_type: str = field(default="BOTTLENECK", init=False)

    def __post_init__(self):
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            raise ConfigError(f"BottleneckConfig preset {self.preset!r} is unknown; choose one of "
                              f"{sorted(PRESETS)} and override fields as needed.")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._check_reduction_factor()
        nl = self.non_linearity
        if not isinstance(nl, str) or nl.lower() not in twin.ACTIVATIONS:
            raise ConfigError(f"BottleneckConfig non_linearity {nl!r} is unknown; choose one of "
                              f"{list(twin.ACTIVATIONS)}.")
        self.non_linearity = nl.lower()
        if self.residual_before_ln == "post_add":
            raise ConfigError("BottleneckConfig residual_before_ln='post_add' takes the residual after "
                              "the block's layer norm, which GPT-2 does not pass to its adapters "
                              "(AdapterHub then fails); use True or False.")
        for name in ("mh_adapter", "output_adapter", "original_ln_before", "original_ln_after",
                     "residual_before_ln", "adapter_residual_before_ln", "ln_before", "ln_after",
                     "is_parallel", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"BottleneckConfig {name} must be True or False, "
                                  f"got {getattr(self, name)!r}.")
        if not (self.mh_adapter or self.output_adapter):
            raise ConfigError("BottleneckConfig has neither mh_adapter nor output_adapter: set "
                              "mh_adapter=True (after attention) and/or output_adapter=True (after the MLP).")
        if self.init_weights not in twin.INITS:
            raise ConfigError(f"BottleneckConfig init_weights {self.init_weights!r} is unknown; choose "
                              f"one of {list(twin.INITS)}.")
        self._check_scaling()
        self._check_rest()

    def _check_reduction_factor(self):
        rf = self.reduction_factor
        factors = rf.values() if isinstance(rf, dict) else [rf]
        keys_ok = not isinstance(rf, dict) or all(
            str(k) == "default" or str(k).isdigit() for k in rf)
        if not keys_ok or not factors or not all(
                isinstance(f, numbers.Real) and not isinstance(f, bool) and f > 0 for f in factors):
            raise ConfigError(f"BottleneckConfig reduction_factor must be a number > 0 (the bottleneck "
                              f"is n_embd // reduction_factor) or a dict such as {{'1': 8, 'default': 16}}, "
                              f"got {rf!r}.")
        if isinstance(rf, dict):
            self.reduction_factor = {str(k): v for k, v in rf.items()}

    def _check_scaling(self):
        s = self.scaling
        if isinstance(s, numbers.Real) and not isinstance(s, bool):
            if s == 0:
                raise ConfigError("BottleneckConfig scaling=0 multiplies the adapter's output by 0: it "
                                  "would change nothing and never train. Use 1.0 (Pfeiffer, Houlsby), "
                                  "4.0 (parallel), 'learned' or 'channel'.")
            self.scaling = float(s)
        elif s not in ("learned", "channel"):
            raise ConfigError(f"BottleneckConfig scaling must be a number, 'learned' or 'channel', "
                              f"got {s!r}.")

    def _check_rest(self):
        layers = self.leave_out
        if not isinstance(layers, (list, tuple)) or not all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in layers):
            raise ConfigError(f"BottleneckConfig leave_out must be a list of layer indices >= 0, "
                              f"got {self.leave_out!r}.")
        self.leave_out = [int(i) for i in self.leave_out]
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 <= d < 1.0:
            raise ConfigError(f"BottleneckConfig dropout must be in [0, 1), got {d!r}.")
        self.dropout = float(d)
        seed = self.init_weights_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ConfigError(f"BottleneckConfig init_weights_seed must be an integer or None, got {seed!r}.")

    def bottleneck_size(self, layer: int, n_embd: int) -> int:
        """m = int(n_embd // reduction_factor) for ``layer``, as AdapterHub (refused below 1)."""
        rf = self.reduction_factor
        if isinstance(rf, dict):
            rf = rf.get(str(layer), rf.get("default"))
            if rf is None:
                raise ConfigError(f"BottleneckConfig reduction_factor {self.reduction_factor} names no "
                                  f"factor for layer {layer} and has no 'default'; add one.")
        m = n_embd // rf
        if not math.isfinite(m):                # a factor so small the quotient overflows
            raise ConfigError(f"BottleneckConfig reduction_factor {rf} makes a bottleneck of "
                              f"{n_embd} // {rf} = {m} units for n_embd={n_embd}; choose a "
                              f"reduction_factor between 1 and {n_embd} (16 is AdapterHub's).")
        m = int(m)
        if m < 1:
            raise ConfigError(f"BottleneckConfig reduction_factor {rf} leaves a bottleneck of "
                              f"int({n_embd} // {rf}) = {m} for n_embd={n_embd}; choose a "
                              f"reduction_factor <= {n_embd}.")
        return m

    # ------------------------------------------------------------ the json form
    def to_dict(self) -> dict:
        """adapter_config.json: every field, with peft_type "BOTTLENECK"."""
        return peft_dict(self, {})

    @classmethod
    def from_dict(cls, d: dict, source: str = "adapter config") -> "BottleneckConfig":
        """Read what to_dict wrote (or the "config" part of an AdapterHub adapter_config.json)."""
        return cls(**from_peft_dict(cls, d, source, _UNUSED_ADAPTERHUB_FIELDS, ignored=("architecture",),
                                    hint="minipeft has no gating, PHM, invertible adapters or "
                                         "stochastic depth: set them to AdapterHub's defaults."))


def adapter_shapes(config: BottleneckConfig, model_config) -> dict[str, dict[str, tuple]]:
    """{module (transformer.h.0.output_adapters): {tensor name: shape}} of one adapter."""
    C, out = model_config.n_embd, {}
    bad = [i for i in config.leave_out if i >= model_config.n_layer]
    if bad:
        raise ConfigError(f"BottleneckConfig leave_out {bad} names layers this model lacks "
                          f"(layers 0 .. {model_config.n_layer - 1}).")
    for i in range(model_config.n_layer):
        if i in config.leave_out:
            continue
        m, dn = config.bottleneck_size(i, C), twin.down_name(config)
        shapes = {f"{dn}.weight": (m, C), f"{dn}.bias": (m,), "adapter_up.weight": (C, m),
                  "adapter_up.bias": (C,)}
        for ln in ("before", "after"):
            if getattr(config, f"ln_{ln}"):
                shapes.update({f"adapter_norm_{ln}.weight": (C,), f"adapter_norm_{ln}.bias": (C,)})
        if config.scaling in ("learned", "channel"):
            shapes["scaling"] = (1,) if config.scaling == "learned" else (C,)
        for module, flag in LOCATIONS.values():
            if getattr(config, flag):
                out[f"transformer.h.{i}.{module}"] = shapes
    return out
