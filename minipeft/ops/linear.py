"""GPT-2's Conv1D: a linear layer whose weight is stored [in, out].

    out = x @ w + b          x (..., in), w (in, out), b (out,)

(Hugging Face keeps OpenAI's TensorFlow layout; torch's nn.Linear is the
transpose, which is why peft needs ``fan_in_fan_out=True`` for GPT-2.)
Backward: dx = dout @ w.T;  dw = x.T @ dout;  db = dout summed over tokens.
"""
from __future__ import annotations


def linear_forward(x, w, b):
    """x (..., in) -> (..., out); cache = x."""
    out = x @ w
    if b is not None:
        out += b
    return out, x


def linear_backward(dout, cache, w, need_params=True):
    """dout (..., out) -> (dx (..., in), dw (in, out), db (out,)).

    With ``need_params=False`` (a frozen layer) the two weight gradients, as
    costly as the forward itself, are skipped and returned as None.
    """
    x = cache
    dx = dout @ w.T                                     # (..., in)
    dw = db = None
    if need_params:
        n_in, n_out = w.shape
        d2 = dout.reshape(-1, n_out)                    # (N, out)
        dw = x.reshape(-1, n_in).T @ d2                 # (in, out)
        db = d2.sum(axis=0)                             # (out,)
    return dx, dw, db
