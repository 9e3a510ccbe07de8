"""Training compute along a trajectory.

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
layer norms are kept (they are < 0.1% and PaLM does not carve them out). Each
family counts its own parameters in its model file (`param_count`, and
`flops_params` = the N above; for OPT the difference is 1.3% at 125m and
< 0.02% at 175b). Callers may pass any N they prefer: every FLOPs function
takes N explicitly.

Tokens seen at a step = step × tokens_per_step. All FLOPs functions are
vectorised over `steps` and return float64 arrays (FLOPs exceed 2**63 at 175b).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from trajax import models


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
                             cfg.num_attention_heads, cfg.head_dim, seq_len or
                             cfg.max_position_embeddings), n


def trajectory_compute(model, cfg, seq_len: int = 0) -> dict:
  """Sizes and training FLOPs of a manifest model, as the result store records them.

  Args:
    model: a `trajax.trajectory.Model` (name, steps, tokens_per_step, params).
    cfg: its family config (from any of its checkpoints: they share one architecture).
    seq_len: T of the PaLM formula; 0 = the config's max_position_embeddings.

  Returns:
    {"architecture": {"family", "config"}, "param_count": all parameters (the
    manifest's `params` when set), "flops_params": N of the FLOPs formulas (the
    manifest's `params` when set), "seq_len": T, "flops": {method: [step] FLOPs}}.
  """
  fam = models.family(cfg.family)
  n = int(model.params or fam.flops_params(cfg))
  t = int(seq_len or cfg.max_position_embeddings)
  return {
      "architecture": {"family": cfg.family, "config": dataclasses.asdict(cfg)},
      "param_count": int(model.params or fam.param_count(cfg)),
      "flops_params": n,
      "seq_len": t,
      "flops": {
          method: training_flops_for_config(cfg, model.steps, model.tokens_per_step, n, method, t)
                  [0].tolist() for method in FLOPS_METHODS
      },
  }
