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

    ia3.py          IA3: the equations, forward, backward, merge
    ia3_model.py    IA3Config, IA3Model: placement (peft's or the paper's), merging, saving

    bottleneck.py   bottleneck adapters (Houlsby, Pfeiffer, parallel): the equations, forward, backward
    bottleneck_model.py BottleneckConfig (AdapterHub's names, presets), BottleneckModel: _residual hooks

    prefix.py       prefix tuning: the equations, the MLP, the per-layer (k, v) reshape, backward
    prefix_model.py PrefixTuningConfig, PrefixTuningModel: the prefix as past keys/values
                    (peft's positions or AdapterHub's), generate, saving

    prompt.py       prompt tuning: the equations, the embedding with virtual tokens, backward
    prompt_model.py PromptTuningConfig, PromptTuningModel: forward, loss, generate, saving
"""
from .base import PeftModel
from .bottleneck_config import BottleneckConfig
from .bottleneck_model import BottleneckModel  # each *_model module registers its method
from .ia3_config import IA3Config
from .ia3_model import IA3Model
from .lora_config import LoraConfig
from .lora_model import LoraModel
from .mapping import get_peft_model
from .prefix_config import PrefixTuningConfig
from .prefix_model import PrefixTuningModel
from .prompt_config import PromptTuningConfig
from .prompt_model import PromptTuningModel

__all__ = ["BottleneckConfig", "BottleneckModel",
           "IA3Config", "IA3Model", "LoraConfig", "LoraModel", "PeftModel",
           "PrefixTuningConfig", "PrefixTuningModel", "PromptTuningConfig",
           "PromptTuningModel", "get_peft_model"]
