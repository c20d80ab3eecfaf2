"""What every PEFT config shares: its checks, and peft's adapter_config.json, read and written.

A config is a dataclass with peft's field names and defaults. ``@checked_config`` gives
every method's config the same checks, whether it is made in Python, read from a JSON
file or built from CLI flags: no NaN or infinite number anywhere (before the method's
own checks run), then every field of the type its annotation names, and ``task_type``
one that minipeft runs. ``read_config`` reads adapter_config.json through the one JSON
reader (io/jsonfile.py). ``peft_dict`` writes a config in the form peft 0.21 writes
(peft's fields minipeft leaves unused at their defaults, so
``peft.PeftConfig.from_pretrained`` reads it); ``from_peft_dict`` reads any such file
back, and refuses, by name, a field whose value minipeft cannot honour rather than
silently ignore it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..io.jsonfile import json_type_name, read_json
from .mapping import config_class_for

PEFT_VERSION = "0.21.2"            # the peft whose format minipeft writes and is tested against
AUTO_MAPPING = {"base_model_class": "GPT2LMHeadModel",
                "parent_library": "transformers.models.gpt2.modeling_gpt2"}
TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS",
              "FEATURE_EXTRACTION")          # peft's TaskType, all of which peft's configs accept
# peft fields that carry no meaning for minipeft's math (bookkeeping, or about devices)
IGNORED_PEFT_FIELDS = {
    "auto_mapping", "base_model_name_or_path", "revision", "inference_mode", "peft_version",
    "megatron_core", "qalora_group_size", "ensure_weight_tying", "runtime_config", "peft_type",
}


def peft_dict(config, unused: dict, **extra) -> dict:
    """``config``'s fields (those in ``config.SAVED_FIELDS`` if it has them, else all),
    plus peft's unused fields at their defaults and ``extra``, sorted as peft sorts them."""
    d = dataclasses.asdict(config)
    keep = getattr(config, "SAVED_FIELDS", None)
    if keep is not None:
        d = {k: v for k, v in d.items() if k in keep}
    d.update(unused)
    d.update(peft_type=config.peft_type, peft_version=PEFT_VERSION, revision=None)
    d.update(extra)
    return dict(sorted(d.items()))


def from_peft_dict(cls, d: dict, source: str, unused: dict, ignored=(),
                   hint: str = "Remove them, or set them to peft's defaults.") -> dict:
    """The keyword arguments of ``cls`` in peft's config dict ``d``. Fields of peft that
    minipeft does not implement (``unused``: name -> default) are accepted at a value
    meaning "off"; anything else is refused by name. ``ignored``: more fields to skip."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source} must be a JSON object, got {type(d).__name__}.")
    want = cls.__dataclass_fields__["peft_type"].default
    if d.get("peft_type", want) != want:
        raise ConfigError(f"{source} is a {d.get('peft_type')} adapter, not {want}; load it with "
                          "PeftModel.from_pretrained, which picks the method from peft_type.")
    own = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs, refused = {}, []
    for k, v in d.items():
        if k in own:
            kwargs[k] = v
        elif k in IGNORED_PEFT_FIELDS or k in ignored:
            continue
        elif v in (None, False, {}, [], ()) or (k in unused and v == unused[k]):
            continue
        else:
            refused.append(f"{k}={v!r}" + ("" if k in unused else " (unknown to minipeft)"))
    if refused:
        raise ConfigError(f"{source} uses {want} options minipeft cannot honour: "
                          f"{', '.join(refused)}. {hint}")
    return kwargs


# ------------------------------------------------------------------ the checks every config gets
def _non_finite(value) -> bool:
    """Is there a NaN or an infinity in ``value`` (a number, or lists / dicts of them)?"""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return not math.isfinite(float(value))
    if isinstance(value, (list, tuple, set)):
        return any(_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    return False


def _fits(value, tp) -> bool:
    """Does ``value`` have the type ``tp`` (a field's annotation)? bool is not a number here."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_fits(v, typing.get_args(tp)[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True


_WORDS = {bool: ("true/false", "true/false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings"),
          dict: ("a JSON object (dict)", "objects"), type(None): ("null (None)", "nulls")}


def _describe(tp) -> str:
    """'an integer or null (None)', 'a list of strings or a string', … for messages."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_WORDS.get(typing.get_args(tp)[0], ('', 'values'))[1]}"
    return _WORDS.get(origin or tp, (getattr(tp, "__name__", str(tp)), ""))[0]


def check_task_type(config) -> None:
    """peft's task types, of which minipeft runs one: GPT-2 as a causal language model.
    peft's TaskType enum is accepted and stored as its string, as peft saves it."""
    value = getattr(config.task_type, "value", config.task_type)
    name = type(config).__name__
    if value is None or value == "CAUSAL_LM":
        config.task_type = value
        return
    if isinstance(value, str) and value in TASK_TYPES:
        raise ConfigError(f"{name} task_type {value!r} is a peft task minipeft does not run: GPT-2 "
                          "here is a causal language model. Use task_type='CAUSAL_LM' or None.")
    raise ConfigError(f"{name} task_type {value!r} is not one of peft's task types "
                      f"({', '.join(TASK_TYPES)}), and peft would refuse to load it; minipeft runs "
                      "GPT-2 as a causal language model: use 'CAUSAL_LM' or None.")


def check_finite(config) -> None:
    """No field holds NaN or an infinity (a scale, a dropout, a factor): it would reach
    the weights and the loss, and show up later as a 'bad learning rate'."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if _non_finite(value):
            raise ConfigError(f"{type(config).__name__} {f.name} is {value!r}: configs take finite "
                              "numbers only (NaN or infinity would reach the weights and the loss). "
                              "Give a finite value.")


def check_values(config) -> None:
    """The checks every config passes, whatever its method: finite numbers, each field of
    the type its annotation names, a task_type minipeft runs. Run when a config is made
    (``@checked_config``) and again when an adapter is made from it (a field may have been
    set since)."""
    check_finite(config)
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in hints and not _fits(value, hints[f.name]):
            raise ConfigError(f"{type(config).__name__} {f.name} must be {_describe(hints[f.name])}, "
                              f"got {value!r} ({json_type_name(value)}).")
    check_task_type(config)


def checked_config(cls):
    """Class decorator (over @dataclass) for a PEFT config: NaN/inf refused before the
    config's own ``__post_init__`` runs (which then checks meanings: r > 0, …), and
    ``check_values`` after it, on the normalised fields."""
    post_init = cls.__post_init__

    @functools.wraps(post_init)
    def __post_init__(self):
        check_finite(self)
        post_init(self)
        check_values(self)
    cls.__post_init__ = __post_init__
    return cls


# ------------------------------------------------------------------ adapter_config.json
class AdapterConfigError(ConfigError, CheckpointError):
    """An adapter_config.json that cannot be read: a ConfigError, as every config minipeft
    cannot honour, and a CheckpointError, as every damaged saved file."""


def read_config(path):
    """adapter_config.json -> the config of the method its ``peft_type`` names (LORA when
    missing, as in peft's oldest files). Every way the file can be malformed (not JSON,
    nested too deep, giant integers, not an object, fields of the wrong type) ends as one
    ConfigError that names the file and says what to do."""
    path = Path(path)
    d = read_json(path, expect=dict, error=AdapterConfigError,
                  fix="Save the adapter again (peft's or minipeft's save_pretrained writes it).")
    return config_class_for(d.get("peft_type", "LORA"), str(path)).from_dict(d, source=str(path))
