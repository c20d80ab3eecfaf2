"""``minipeft bench``: minipeft against torch + peft on a CPU, measured in one run.

    python -m minipeft.bench                 # GPT-2 124M shape, a few minutes
    python -m minipeft.bench --quick         # a tiny shape, seconds (a smoke run)
    python -m minipeft.bench --no-torch      # minipeft alone (torch not installed)

The default case: GPT-2 124M shape (12 layers, 12 heads, n_embd 768, vocab 50257),
float32, batch 4 × 128 tokens, LoRA r=8, lora_alpha=16 on c_attn, dropout 0, the same
random weights on both sides. Sections (``--only`` picks some):

    train    LoRA training step, tokens/s: minipeft ``loss_and_grads`` + its AdamW step,
             against peft: ``model(ids, labels=ids).loss.backward()``, torch's AdamW
             step, ``zero_grad``. Tokens = batch × seq.
    masked   the same step with the first half of every sequence's labels -100 (completion-
             only labels, as ``finetune`` and the demo train): minipeft computes no lm_head
             row for those positions, torch + peft computes them all.
    forward  the logits of the batch without gradients, tokens/s (the base GPT-2).
    decode   greedy generation with a KV cache, batch 1, ``--prompt`` tokens then
             ``--new-tokens`` new ones (eos cannot stop it): new tokens/s, prefill included.
    memory   peak memory of the training step, each side in a child process (memory.py).
    matmul   numpy's own matmul GFLOP/s on the step's shapes, and each side's share of
             that peak (matmul.py, with the step's FLOP count).
    profile  minipeft's training step op by op: ms per step and % of the step (profile.py).
    methods  the training step of each PEFT method (minipeft only) against LoRA's.

One file per concern: config.py (what is measured), machine.py (the CPU, vendor, vector
width, BLAS build and the kernel it runs), models.py (the set-up), timing.py
(the measured calls, alternating), memory.py, matmul.py, profile.py, methods.py,
report.py (the printed tables), run.py (one run), cli.py (the flags). How to read the
numbers: benchmarks/README.md.
"""
from .cli import add_arguments, config_from_args, main, run_args
from .config import QUICK, SECTIONS, BenchConfig
from .machine import machine_info, openblas_runtime
from .matmul import lora_step_flops
from .methods import METHODS
from .run import run

__all__ = ["BenchConfig", "QUICK", "SECTIONS", "METHODS", "add_arguments", "config_from_args",
           "lora_step_flops", "machine_info", "main", "openblas_runtime", "run", "run_args"]
