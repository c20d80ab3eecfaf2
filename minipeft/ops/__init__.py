"""The ops of GPT-2 as forward/backward pairs: ``x_forward(...) -> (out, cache)``,
``x_backward(dout, cache) -> grads``. Plain NumPy, one file per op."""
from .attention import (
    AttentionCache,
    attention_backward,
    attention_forward,
    attention_mask_allowed,
    merge_heads,
    merge_heads_backward,
    split_heads,
    split_heads_backward,
)
from .embedding import EmbeddingCache, embedding_backward, embedding_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import LayerNormCache, layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .loss import (
    IGNORE_INDEX,
    CrossEntropyCache,
    cross_entropy,
    cross_entropy_backward,
    cross_entropy_forward,
    lm_head_loss,
    shift_labels,
)
from .residual import residual_backward, residual_forward

__all__ = ["AttentionCache", "attention_backward", "attention_forward", "attention_mask_allowed",
           "merge_heads", "merge_heads_backward", "split_heads", "split_heads_backward",
           "EmbeddingCache", "embedding_backward", "embedding_forward", "gelu_backward",
           "gelu_forward", "LayerNormCache", "layernorm_backward", "layernorm_forward",
           "linear_backward", "linear_forward", "IGNORE_INDEX", "CrossEntropyCache",
           "cross_entropy", "cross_entropy_backward", "cross_entropy_forward", "lm_head_loss",
           "shift_labels",
           "residual_backward", "residual_forward"]
