"""Which model class runs which config, and ``get_peft_model`` (as peft's mapping.py).

Each PEFT method registers here: its config class (with its ``peft_type``, the
name written in adapter_config.json) and the PeftModel subclass that runs it.
"""
from __future__ import annotations

from ..errors import ConfigError
from .bottleneck_model import BottleneckConfig, BottleneckModel
from .ia3_model import IA3Config, IA3Model
from .lora_config import LoraConfig
from .lora_model import LoraModel
from .prefix_model import PrefixTuningConfig, PrefixTuningModel
from .prompt_model import PromptTuningConfig, PromptTuningModel

MODEL_FOR_CONFIG = {
    LoraConfig: LoraModel,
    PrefixTuningConfig: PrefixTuningModel,
    PromptTuningConfig: PromptTuningModel,
    IA3Config: IA3Model,
    BottleneckConfig: BottleneckModel,
}


def config_class_for(peft_type: str, source: str):
    """The config class saved as ``peft_type`` in adapter_config.json."""
    for cls in MODEL_FOR_CONFIG:
        if cls.__dataclass_fields__["peft_type"].default == peft_type:
            return cls
    known = [c.__dataclass_fields__["peft_type"].default for c in MODEL_FOR_CONFIG]
    raise ConfigError(f"{source} has peft_type {peft_type!r}, which minipeft does not implement; "
                      f"it reads {', '.join(known)}.")


def get_peft_model(model, config, adapter_name: str = "default", seed: int = 0):
    """Wrap ``model`` with a new adapter for ``config``, as peft.get_peft_model. The base
    stays frozen; ``seed`` makes the adapter's initialisation repeatable."""
    model_cls = MODEL_FOR_CONFIG.get(type(config))
    if model_cls is None:
        raise ConfigError(f"get_peft_model needs a PEFT config such as LoraConfig, got "
                          f"{type(config).__name__}; the configs are "
                          f"{', '.join(c.__name__ for c in MODEL_FOR_CONFIG)}.")
    return model_cls(model, config, adapter_name=adapter_name, seed=seed)
