"""minipeft: parameter-efficient fine-tuning of GPT-2 in NumPy, checked against torch."""
from . import analysis, compare  # minipeft.analysis.*, minipeft.compare.run after `import minipeft`
from .config import GPT2Config
from .errors import (
    CheckpointError,
    ConfigError,
    HubError,
    InputError,
    MinipeftError,
    SaveError,
    WeightsNotFoundError,
)
from .io.checkpoint import convert_checkpoint
from .model import GPT2
from .peft import (
    BottleneckConfig,
    BottleneckModel,
    IA3Config,
    IA3Model,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PrefixTuningModel,
    PromptTuningConfig,
    PromptTuningModel,
    get_peft_model,
)
from .tokenizer import load_tokenizer

__version__ = "0.1.0"

__all__ = ["GPT2", "GPT2Config", "convert_checkpoint", "load_tokenizer", "LoraConfig",
           "BottleneckConfig", "BottleneckModel", "IA3Config", "IA3Model",
           "PrefixTuningConfig", "PrefixTuningModel", "PromptTuningConfig", "PromptTuningModel",
           "PeftModel", "get_peft_model", "MinipeftError",
           "ConfigError", "InputError", "CheckpointError", "WeightsNotFoundError", "HubError",
           "SaveError", "analysis", "compare"]
