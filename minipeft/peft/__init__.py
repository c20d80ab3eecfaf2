"""PEFT methods on minipeft's GPT2: configs with peft's names, get_peft_model, PeftModel.

    base.py         PeftModel: what every method shares (frozen base, modes, saving)
    mapping.py      get_peft_model: which model runs which config
    config_base.py  reading and writing peft's adapter_config.json
    io.py           save_pretrained / from_pretrained in peft's format

    lora.py         LoRA / rsLoRA / DoRA: the equations, forward, backward, merge
    lora_init.py    peft's initialisations (kaiming, gaussian, PiSSA, OLoRA) and
                    add_weighted_adapter's combinations (linear, cat, svd)
    lora_config.py  LoraConfig
    lora_model.py   LoraModel: the _linear hooks, adapters, merging
"""
from .base import PeftModel
from .lora_config import LoraConfig
from .lora_model import LoraModel
from .mapping import get_peft_model

__all__ = ["LoraConfig", "LoraModel", "PeftModel", "get_peft_model"]
