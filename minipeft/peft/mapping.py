"""Which PEFT methods exist: each registers itself here, and ``get_peft_model`` reads it.

As peft's ``register_peft_method`` (peft/utils/peft_types.py) fills the mappings that
``get_peft_model`` and ``PeftModel.from_pretrained`` read, every method's model module
ends with one call:

    register_peft_method(peft_type="LORA", config_cls=LoraConfig, model_cls=LoraModel)

``peft_type`` is the name written in adapter_config.json. This module imports no
method and no model: methods import it, never the other way round, and
``minipeft.peft`` imports every method module, so ``import minipeft`` registers them all.
"""
from __future__ import annotations

from ..errors import ConfigError

PEFT_TYPE_TO_CONFIG_MAPPING: dict[str, type] = {}     # "LORA" -> LoraConfig
PEFT_TYPE_TO_MODEL_MAPPING: dict[str, type] = {}      # "LORA" -> LoraModel


def register_peft_method(*, peft_type: str, config_cls: type, model_cls: type) -> None:
    """Make a method known: its config class (whose ``peft_type`` field defaults to
    ``peft_type``) and the PeftModel subclass that runs it."""
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise KeyError(f"a PEFT method {peft_type!r} is registered already; choose a unique name.")
    if config_cls.__dataclass_fields__["peft_type"].default != peft_type:
        raise ValueError(f"{config_cls.__name__}.peft_type is not {peft_type!r}.")
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    PEFT_TYPE_TO_MODEL_MAPPING[peft_type] = model_cls


def config_class_for(peft_type: str, source: str) -> type:
    """The config class saved as ``peft_type`` in adapter_config.json."""
    if not isinstance(peft_type, str) or peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ConfigError(f"{source} has peft_type {peft_type!r}, which minipeft does not implement; "
                          f"it reads {', '.join(PEFT_TYPE_TO_CONFIG_MAPPING)}.")
    return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]


def model_class_for(config) -> type | None:
    """The PeftModel subclass that runs ``config`` (None: not a registered config)."""
    peft_type = getattr(config, "peft_type", None)
    if not isinstance(peft_type, str) or type(config) is not PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type):
        return None
    return PEFT_TYPE_TO_MODEL_MAPPING[peft_type]


def get_peft_model(model, config, adapter_name: str = "default", seed: int = 0):
    """Wrap ``model`` with a new adapter for ``config``, as peft.get_peft_model. The base
    stays frozen; ``seed`` makes the adapter's initialisation repeatable."""
    model_cls = model_class_for(config)
    if model_cls is None:
        raise ConfigError(f"get_peft_model needs a PEFT config such as LoraConfig, got "
                          f"{type(config).__name__}; the configs are "
                          f"{', '.join(c.__name__ for c in PEFT_TYPE_TO_CONFIG_MAPPING.values())}.")
    return model_cls(model, config, adapter_name=adapter_name, seed=seed)
