"""PEFT methods on minipeft's GPT2: configs with peft's names, get_peft_model, PeftModel.

    lora.py       LoRA / rsLoRA / DoRA: the equations, forward, backward, merge
    lora_init.py  peft's initialisations (kaiming, gaussian, PiSSA, OLoRA) and
                  add_weighted_adapter's combinations (linear, cat, svd)
    config.py     LoraConfig, read and written as peft's adapter_config.json
    model.py      PeftModel: the GPT2 hooks, adapters, merging
    io.py         save_pretrained / from_pretrained in peft's format
"""
from .config import LoraConfig
from .model import PeftModel, get_peft_model

__all__ = ["LoraConfig", "PeftModel", "get_peft_model"]
