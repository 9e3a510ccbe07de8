"""Training compute along a trajectory, and OPT parameter counts.

Xia et al. (2023) plot against training FLOPs "following Chowdhery et al.
(2022)", i.e. PaLM Appendix B: a dense decoder-only Transformer costs

    6·N + 12·L·H·Q·T   FLOPs per training token (forward + backward),

where N is the parameter count, L layers, H heads, Q head dimension and T the
sequence length; 12·L·H·Q·T is the attention score/value matmuls that 6·N
omits. The classic alternative is 6·N per token (6·N·D for D tokens).

What we use for N. 6·N counts 2 FLOPs per multiply-add per weight in the
forward pass (×3 with the backward pass), so N should hold the weights that
take part in a matmul. For OPT that is every parameter except the learned
position table (a lookup, no matmul); the token embedding stays in N because
it is tied to the LM head, whose matmul costs 2·V·d per token. Biases and
layer norms are kept (they are < 0.1% and PaLM does not carve them out). This is
`opt_flops_params` = `opt_param_count` − (max_positions + 2)·hidden; the
difference from the full count is 1.3% at 125m and < 0.02% at 175b. Callers
may pass any N they prefer: every FLOPs function takes N explicitly.

Tokens seen at a step = step × tokens_per_step. All FLOPs functions are
vectorised over `steps` and return float64 arrays (FLOPs exceed 2**63 at 175b).
"""
from __future__ import annotations

import numpy as np

# HF OPTLearnedPositionalEmbedding keeps 2 extra rows (fairseq padding offset).
OPT_POSITION_OFFSET = 2


def opt_param_breakdown(vocab_size: int, hidden_size: int, num_layers: int, ffn_dim: int,
                        max_positions: int, word_embed_proj_dim: int | None = None,
                        do_layer_norm_before: bool = True) -> dict[str, int]:
  """Parameters of HF `OPTForCausalLM`, per module group (tied LM head counted once).

    Layout (transformers OPTDecoder): embed_tokens [vocab, proj]; embed_positions
    [max_positions + 2, hidden]; project_in [proj → hidden] and project_out
    [hidden → proj], both bias-free, only when proj != hidden; per layer
    q/k/v/out_proj [hidden, hidden] + bias, self_attn_layer_norm and
    final_layer_norm (weight + bias), fc1 [hidden, ffn] + bias, fc2 [ffn, hidden]
    + bias; a final decoder layer norm only for pre-LN models
    (`do_layer_norm_before=True`; the 350m model is post-LN and has none).

    Args:
      vocab_size, hidden_size, num_layers, ffn_dim, max_positions: OPTConfig's
        vocab_size, hidden_size, num_hidden_layers, ffn_dim,
        max_position_embeddings.
      word_embed_proj_dim: embedding width (None → hidden_size).
      do_layer_norm_before: pre-LN (True) or post-LN (False).

    Returns:
      {"embed_tokens", "embed_positions", "project_in", "project_out",
       "layers", "final_layer_norm", "total"} → int.
    """
  d, proj = int(hidden_size), int(word_embed_proj_dim or hidden_size)
  attn = 4 * (d * d + d)
  norms = 2 * (2 * d)
  mlp = (d * ffn_dim + ffn_dim) + (ffn_dim * d + d)
  parts = {
      "embed_tokens": vocab_size * proj,
      "embed_positions": (max_positions + OPT_POSITION_OFFSET) * d,
      "project_in": proj * d if proj != d else 0,
      "project_out": d * proj if proj != d else 0,
      "layers": num_layers * (attn + norms + mlp),
      "final_layer_norm": 2 * d if do_layer_norm_before else 0,
  }
  parts["total"] = sum(parts.values())
  return {k: int(v) for k, v in parts.items()}


def opt_param_count(vocab_size: int, hidden_size: int, num_layers: int, ffn_dim: int,
                    max_positions: int, word_embed_proj_dim: int | None = None,
                    do_layer_norm_before: bool = True) -> int:
  """Total parameters of HF `OPTForCausalLM` (see `opt_param_breakdown`)."""
  return opt_param_breakdown(vocab_size, hidden_size, num_layers, ffn_dim, max_positions,
                             word_embed_proj_dim, do_layer_norm_before)["total"]


def opt_flops_params(vocab_size: int, hidden_size: int, num_layers: int, ffn_dim: int,
                     max_positions: int, word_embed_proj_dim: int | None = None,
                     do_layer_norm_before: bool = True) -> int:
  """N for the FLOPs formulas: all parameters except the position table (see module doc)."""
  parts = opt_param_breakdown(vocab_size, hidden_size, num_layers, ffn_dim, max_positions,
                              word_embed_proj_dim, do_layer_norm_before)
  return parts["total"] - parts["embed_positions"]


def palm_flops_per_token(n_params: float, num_layers: int, num_heads: int, head_dim: int,
                         seq_len: int) -> float:
  """6·N + 12·L·H·Q·T training FLOPs per token (PaLM, Chowdhery et al. 2022, App. B).

    Args:
      n_params: N (see the module doc for the OPT choice).
      num_layers, num_heads, head_dim: L, H, Q.
      seq_len: T, the training sequence length (2048 for OPT).

    Returns:
      FLOPs per training token, as a Python float.
    """
  return 6.0 * float(n_params) + 12.0 * num_layers * num_heads * head_dim * seq_len


def tokens_seen(steps, tokens_per_step: int) -> np.ndarray:
  """[step] float64 tokens consumed after each optimizer step: step × tokens_per_step."""
  steps = np.asarray(steps, dtype=np.float64)
  if np.any(steps < 0):
    raise ValueError(f"steps must be >= 0, got min {steps.min()}")
  return steps * float(tokens_per_step)


def training_flops_palm(steps, tokens_per_step: int, n_params: float, num_layers: int,
                        num_heads: int, head_dim: int, seq_len: int) -> np.ndarray:
  """Cumulative training FLOPs at each step, PaLM formula.

    Args:
      steps: [step] optimizer steps (scalar or array).
      tokens_per_step: tokens per optimizer step (batch sequences × seq_len).
      n_params, num_layers, num_heads, head_dim, seq_len: see
        `palm_flops_per_token`.

    Returns:
      float64 array shaped like `steps`.
    """
  return tokens_seen(steps, tokens_per_step) * palm_flops_per_token(n_params, num_layers, num_heads,
                                                                    head_dim, seq_len)


def training_flops_6nd(steps, tokens_per_step: int, n_params: float) -> np.ndarray:
  """Cumulative training FLOPs at each step, 6·N·D with D = tokens seen."""
  return 6.0 * float(n_params) * tokens_seen(steps, tokens_per_step)


def opt_training_flops(model, steps, method: str = "palm") -> np.ndarray:
  """Training FLOPs of one OPT model described by a `configs/opt_paper.py` entry.

    Args:
      model: a config entry with vocab_size, hidden_size, num_layers, num_heads,
        ffn_dim, max_positions, word_embed_proj_dim, do_layer_norm_before,
        seq_len and tokens_per_step (attribute access, e.g. a ConfigDict).
      steps: [step] optimizer steps.
      method: "palm" (6N + 12LHQT, the paper's choice) or "6nd".

    Returns:
      float64 array shaped like `steps`.
    """
  n = opt_flops_params(model.vocab_size, model.hidden_size, model.num_layers, model.ffn_dim,
                       model.max_positions, model.word_embed_proj_dim, model.do_layer_norm_before)
  if method == "palm":
    return training_flops_palm(steps, model.tokens_per_step, n, model.num_layers, model.num_heads,
                               model.hidden_size // model.num_heads, model.seq_len)
  if method == "6nd":
    return training_flops_6nd(steps, model.tokens_per_step, n)
  raise ValueError(f"method must be 'palm' or '6nd', got {method!r}")


FLOPS_METHODS = ("palm", "6nd")


def config_flops_params(cfg) -> int:
  """N for the FLOPs formulas from a model family config (`trajax.models`).

    Each family module defines `flops_params(cfg)` (its matmul weights, as above).
    """
  from trajax import models  # lazy: models import nothing from here
  return int(models.family(cfg.family).flops_params(cfg))


def training_flops_for_config(cfg, steps, tokens_per_step: int, n_params: int | None = None,
                              method: str = "palm", seq_len: int = 0):
  """Cumulative training FLOPs at `steps` of a model with family config `cfg`.

    Args:
      cfg: a family config (layers, heads, hidden size and context length are read).
      steps: [checkpoint] optimizer steps.
      tokens_per_step: tokens per optimizer step.
      n_params: N; default `config_flops_params(cfg)`.
      method: "palm" (6N + 12LHQT, the paper's) or "6nd".
      seq_len: T of the PaLM formula; 0 = the config's max_position_embeddings.

    Returns:
      ([checkpoint] float64 FLOPs, N used).
    """
  if method not in FLOPS_METHODS:
    raise ValueError(f"flops method must be one of {FLOPS_METHODS}, got {method!r}")
  n = int(n_params) if n_params else config_flops_params(cfg)
  steps = np.asarray(steps, np.float64)
  if method == "6nd":
    return training_flops_6nd(steps, tokens_per_step, n), n
  return training_flops_palm(steps, tokens_per_step, n, cfg.num_hidden_layers,
                             cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads,
                             seq_len or cfg.max_position_embeddings), n
