"""What the benchmark measures, on which shape: ``BenchConfig`` and its sections."""
from __future__ import annotations

from dataclasses import dataclass

SECTIONS = ("train", "masked", "forward", "decode", "memory", "matmul", "profile", "methods")


@dataclass
class BenchConfig:
    """What to measure, on which shape. The defaults are GPT-2 124M, batch 4 × 128."""
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    n_positions: int = 1024
    batch: int = 4
    seq: int = 128
    r: int = 8                       # LoRA rank
    lora_alpha: float = 16.0
    target_modules: tuple = ("c_attn",)
    prompt: int = 16                 # decode: prompt tokens
    new_tokens: int = 64             # decode: new tokens
    reps: int = 5                    # alternating repetitions; the median is reported
    warmup: int = 1
    pause: float = 0.2               # seconds between alternating runs
    dtype: str = "float32"
    torch: bool = True               # False: minipeft alone
    sections: tuple = SECTIONS
    seed: int = 0

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


QUICK = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, n_positions=64, batch=2, seq=16,
             prompt=4, new_tokens=8, reps=2, pause=0.0)
