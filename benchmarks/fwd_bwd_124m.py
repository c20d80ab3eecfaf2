"""Forward + backward of the full model at GPT-2 124M shape: minipeft vs torch, one run.

    python benchmarks/fwd_bwd_124m.py [--batch 4] [--seq 128] [--repeats 5]

Both sides get the same random weights (transformers' init) and the same tokens,
float32, every parameter trainable (the plain-GPT-2 case; PEFT steps, which skip
the frozen weights' gradients, come with the PEFT benchmark). Runs alternate
between the two so that machine noise hits both alike; the median is reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    from minipeft import GPT2, GPT2Config
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(HFConfig()).eval()
    sd = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()
          if k != "lm_head.weight" and not k.endswith(".attn.bias")}
    ours = GPT2(GPT2Config(), sd)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50257, size=(args.batch, args.seq))
    tids = torch.as_tensor(ids)

    def step_ours():
        return ours.loss_and_grads(ids, ids)[0]

    def step_torch():
        hf.zero_grad(set_to_none=True)
        loss = hf(tids, labels=tids).loss
        loss.backward()
        return loss.item()

    step_ours(), step_torch()                            # warm-up
    times = {"minipeft": [], "torch": []}
    for _ in range(args.repeats):
        for name, fn in (("minipeft", step_ours), ("torch", step_torch)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    print(f"GPT-2 124M shape, float32, batch {args.batch} x {args.seq} tokens, forward + backward "
          f"of every parameter, median of {args.repeats}; {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"  {name:9s} {t * 1000:8.1f} ms   {tokens / t:8.1f} tokens/s")
    print(f"  ratio minipeft/torch tokens/s: {med['torch'] / med['minipeft']:.2f}")


if __name__ == "__main__":
    main()
