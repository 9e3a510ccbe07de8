"""Rotary position embeddings of the Llama-architecture families, as transformers computes them.

`Rope` holds `rope_theta` and the scaling that `config.json` names, in either
spelling transformers reads: `rope_parameters` (transformers 5) or the older
top-level `rope_theta` + `rope_scaling` (Llama 2, TinyLlama, OLMo, Amber). The
scaling types kept are the ones whose result trajax can reproduce exactly:

  * `default`: inv_freq_i = theta^(-2i / head_dim).
  * `linear`: default / factor (positions interpolated).
  * `llama3`: Llama 3.1's piecewise rescaling of the default frequencies.
  * `dynamic` (NTK): transformers recomputes the base from the longest sequence
    of each call once it exceeds `max_position_embeddings`, and keeps that state
    between calls; up to `max_position_embeddings` it is exactly `default`. So
    it is accepted, and a model refuses (ValueError) any sequence longer than
    that instead of scoring it differently from the reference.

Every other type (yarn, longrope, ...) is a ValueError naming the field.
Frequencies are computed in float32 in the same order of operations as
`transformers.modeling_rope_utils`, so the tables agree to the last bits.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from trajax.models import hf_config

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
# Keys of the rope dict each type reads (besides rope_type/type and rope_theta).
_TYPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


@dataclasses.dataclass(frozen=True)
class Rope:
  """Rotary settings; `factor` etc. matter only for the types that read them."""
  theta: float = 10000.0
  type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.type not in ROPE_TYPES:
      raise ValueError(f"rope type {self.type!r} is not supported; expected one of {ROPE_TYPES}")
    if self.type == "llama3" and not self.low_freq_factor < self.high_freq_factor:
      raise ValueError(f"llama3 rope needs low_freq_factor {self.low_freq_factor} < "
                       f"high_freq_factor {self.high_freq_factor}")

  def inv_freq(self, head_dim: int) -> np.ndarray:
    """[head_dim // 2] float32 inverse frequencies, as transformers' rope init functions."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / np.power(np.float32(self.theta), exponent)).astype(np.float32)
    if self.type == "linear":
      return (inv / np.float32(self.factor)).astype(np.float32)
    if self.type != "llama3":
      return inv
    old = self.original_max_position_embeddings
    low_wavelen = old / self.low_freq_factor
    high_wavelen = old / self.high_freq_factor
    wavelen = (np.float32(2 * math.pi) / inv).astype(np.float32)
    scaled = np.where(wavelen > low_wavelen, inv / np.float32(self.factor), inv).astype(np.float32)
    smooth = ((old / wavelen - self.low_freq_factor) /
              (self.high_freq_factor - self.low_freq_factor)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / np.float32(self.factor) + smooth * scaled).astype(
        np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)

  def to_hf(self) -> dict[str, Any]:
    """The `rope_parameters` dict transformers 5 writes."""
    out: dict[str, Any] = {"rope_type": self.type, "rope_theta": self.theta}
    for key in sorted(_TYPE_KEYS[self.type]):
      out[key] = getattr(self, key)
    return out


def check_length(rope: Rope, length: int, max_position_embeddings: int) -> None:
  """Refuses a sequence on which `dynamic` scaling would differ from `default` (static shapes)."""
  if rope.type == "dynamic" and length > max_position_embeddings:
    raise ValueError(f"rope type 'dynamic': sequences of {length} tokens exceed "
                     f"max_position_embeddings={max_position_embeddings}; transformers then "
                     f"rescales the frequencies per call, which trajax does not reproduce. Score "
                     f"at most {max_position_embeddings} tokens per row")


def tables(positions_bt, inv_freq):
  """(cos, sin), each [batch, length, 1, head_dim] float32 (rotate-half layout)."""
  freqs_btr = positions_bt[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  emb_btr = jnp.concatenate([freqs_btr, freqs_btr], axis=-1)[:, :, None, :]
  return jnp.cos(emb_btr), jnp.sin(emb_btr)


def from_hf(f: hf_config.HFFields, max_position_embeddings: int) -> Rope:
  """The Rope of a parsed `config.json` (see the module docstring for the spellings).

  Args:
    f: the config's fields (errors name its file).
    max_position_embeddings: llama3's `original_max_position_embeddings` default.
  Returns:
    A Rope. Unknown rope keys, partial rotary and unsupported types are ValueErrors.
  """
  hf, source = f.hf, f.source
  scaling = f.mapping("rope_scaling")
  params = f.mapping("rope_parameters")
  if scaling and params and _normalized(scaling) != _normalized(params):
    raise ValueError(f"{source}: fields 'rope_scaling' = {scaling!r} and 'rope_parameters' = "
                     f"{params!r} are two spellings of one setting and disagree")
  key = "rope_scaling" if scaling else "rope_parameters"
  rope = scaling or params
  r = hf_config.HFFields(rope, f"{source}: field {key!r}")
  rope_type = r.string(("rope_type", "type"), "default")
  if rope_type not in ROPE_TYPES:
    raise ValueError(f"{source}: field {key!r}: rope type {rope_type!r} is not supported; "
                     f"expected one of {list(ROPE_TYPES)} (others are not reproduced exactly)")
  allowed = {"rope_type", "type", "rope_theta", "partial_rotary_factor"} | _TYPE_KEYS[rope_type]
  unknown = sorted(set(rope) - allowed)
  if unknown:
    raise ValueError(f"{source}: field {key!r} has {unknown}, which rope type {rope_type!r} "
                     f"does not use; expected only {sorted(allowed)}")
  for where, fields in ((f"{key}.partial_rotary_factor", r), ("partial_rotary_factor", f)):
    if fields.hf.get("partial_rotary_factor", 1.0) not in (1, 1.0, None):
      raise ValueError(f"{source}: field {where!r} is "
                       f"{fields.hf['partial_rotary_factor']!r}; this family rotates whole heads "
                       f"(expected 1.0)")
  theta = f.number("rope_theta", 10000.0, lo_open=True)
  if "rope_theta" in rope:
    in_dict = r.number("rope_theta", lo_open=True)
    if "rope_theta" in hf and in_dict != theta:
      raise ValueError(f"{source}: fields {key!r}.rope_theta = {in_dict} and 'rope_theta' = "
                       f"{theta} are two names for one setting and disagree")
    theta = in_dict
  kwargs: dict[str, Any] = {"theta": theta, "type": rope_type}
  if rope_type != "default":
    kwargs["factor"] = r.number("factor", lo=1.0)
  if rope_type == "llama3":
    kwargs["low_freq_factor"] = r.number("low_freq_factor", lo_open=True)
    kwargs["high_freq_factor"] = r.number("high_freq_factor", lo_open=True)
    kwargs["original_max_position_embeddings"] = r.integer("original_max_position_embeddings",
                                                           max_position_embeddings)
  try:
    return Rope(**kwargs)
  except ValueError as e:
    raise ValueError(f"{source}: field {key!r}: {e}") from None


def _normalized(rope: dict) -> dict:
  """A rope dict without its theta, the type under one key (to compare two spellings)."""
  out = {k: v for k, v in rope.items() if k not in ("type", "rope_theta")}
  out.setdefault("rope_type", rope.get("type", "default"))
  return out
