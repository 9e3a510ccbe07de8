"""trajax: per-token log-probs for every checkpoint of a pre-training trajectory.

Public API:
  load(path, dtype=jnp.float32) -> model     (an HF or a converted checkpoint directory)
  load_hf(path, dtype=jnp.float32) -> model  (an HF checkpoint directory)
  token_logprobs(model, tokens_bt, mask_bt=None) -> [batch, length] float32
"""
from trajax.checkpoints import load, load_tokenizer
from trajax.hf_checkpoints import load_hf
from trajax.scoring import Scorer, token_logprobs

__version__ = "0.1.0"
__all__ = ["load", "load_hf", "load_tokenizer", "token_logprobs", "Scorer"]
