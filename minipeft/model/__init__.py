from .gpt2 import GPT2

__all__ = ["GPT2"]
