"""GPT-Neo's architecture config: HF `GPTNeoConfig` fields, read strictly (see gpt_neo.py)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from trajax.models import hf_config
from trajax.models import layers as L

# The window of a global layer: larger than any sequence.
GLOBAL_WINDOW = 2**30
ATTENTION_KINDS = ("global", "local")


def expand_attention_types(attention_types, source: str = "config.json") -> tuple[str, ...]:
  """HF's `[[["global", "local"], 12]]` -> ("global", "local", ..., "local") (24 entries)."""
  def bad(why):
    return ValueError(f"{source}: field 'attention_types' is {attention_types!r}; expected a list "
                      f"of [kinds, repeat] pairs such as [[[\"global\", \"local\"], 12]] ({why})")

  if not isinstance(attention_types, (list, tuple)):
    raise bad("not a list")
  out = []
  for pair in attention_types:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
      raise bad(f"{pair!r} is not a [kinds, repeat] pair")
    kinds, repeat = pair
    if not isinstance(kinds, (list, tuple)) or not all(k in ATTENTION_KINDS for k in kinds):
      raise bad(f"kinds {kinds!r} is not a list of {list(ATTENTION_KINDS)}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
      raise bad(f"repeat {repeat!r} is not an integer >= 0")
    if len(out) + len(kinds) * repeat > hf_config.MAX_LAYERS:
      raise bad(f"more than {hf_config.MAX_LAYERS} layers")
    out.extend(list(kinds) * repeat)
  return tuple(out)


def _attention_layers(hf: dict[str, Any], source: str) -> tuple[str, ...]:
  """`attention_layers` if given, else `attention_types` expanded; the two must agree."""
  expanded = expand_attention_types(hf.get("attention_types", [[["global", "local"], 12]]), source)
  if "attention_layers" not in hf:
    return expanded
  layers = hf["attention_layers"]
  if not isinstance(layers, list) or not all(k in ATTENTION_KINDS for k in layers):
    raise ValueError(f"{source}: field 'attention_layers' is {layers!r}; expected a list of "
                     f"{list(ATTENTION_KINDS)}")
  if "attention_types" in hf and tuple(layers) != expanded:
    raise ValueError(f"{source}: field 'attention_layers' {layers} disagrees with "
                     f"'attention_types' {hf['attention_types']} (which expands to "
                     f"{list(expanded)})")
  return tuple(layers)


@dataclasses.dataclass(frozen=True)
class GPTNeoConfig:
  """Architecture of one GPT-Neo model (HF GPTNeoConfig's fields that matter)."""
  vocab_size: int = 50257
  hidden_size: int = 2048
  num_layers: int = 24
  num_heads: int = 16
  intermediate_size: int | None = None
  max_position_embeddings: int = 2048
  attention_layers: tuple[str, ...] = ("global", "local") * 12
  window_size: int = 256
  activation_function: str = "gelu_new"
  layer_norm_epsilon: float = 1e-5
  tie_word_embeddings: bool = True
  bos_token_id: int = 50256
  eos_token_id: int = 50256
  pad_token_id: int = 50256  # HF has None; decoding needs an id, so eos.
  initializer_range: float = 0.02

  family = "gpt_neo"

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                       f"num_heads={self.num_heads}")
    if len(self.attention_layers) != self.num_layers:
      raise ValueError(f"attention_layers has {len(self.attention_layers)} entries, expected "
                       f"num_layers={self.num_layers}")
    bad = sorted(set(self.attention_layers) - set(ATTENTION_KINDS))
    if bad:
      raise ValueError(f"attention_layers: unknown attention type(s) {bad}; expected "
                       f"{list(ATTENTION_KINDS)}")
    if self.window_size < 1:
      raise ValueError(f"window_size must be >= 1, got {self.window_size}")
    L.activation(self.activation_function)

  # HF's attribute_map aliases; other trajax code reads these names.
  @property
  def num_hidden_layers(self) -> int:
    return self.num_layers

  @property
  def num_attention_heads(self) -> int:
    return self.num_heads

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def ffn_dim(self) -> int:
    return self.intermediate_size or 4 * self.hidden_size

  def layer_windows(self) -> np.ndarray:
    """[layers] int32: how many slots back (self included) each layer's queries see."""
    return np.array(
        [self.window_size if k == "local" else GLOBAL_WINDOW for k in self.attention_layers],
        np.int32)

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], source: str = "config.json") -> "GPTNeoConfig":
    """Builds the config from a parsed HF `config.json` dict.

    Each field must have the JSON type transformers writes (`hf_config.HFFields`);
    a bad one is a ValueError naming `source` and the field.
    """
    required = {
        "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads"
    }
    missing = [k for k, alias in required.items() if k not in hf and alias not in hf]
    if missing:
      raise ValueError(f"{source}: missing field(s) {missing} required for a GPT-Neo config")
    f = hf_config.HFFields(hf, source)
    d = cls()
    eos = f.token_id("eos_token_id", d.eos_token_id)
    fields = {
        "vocab_size": f.integer("vocab_size"),
        "hidden_size": f.integer("hidden_size"),
        "num_layers": f.integer(("num_layers", "num_hidden_layers"), lo=0, hi=hf_config.MAX_LAYERS),
        "num_heads": f.integer(("num_heads", "num_attention_heads")),
        # HF: null means 4 * hidden_size.
        "intermediate_size": f.integer("intermediate_size", None, nullable=True),
        "max_position_embeddings": f.integer("max_position_embeddings", 2048),
        "attention_layers": _attention_layers(hf, source),
        "window_size": f.integer("window_size", 256),
        "activation_function": f.string("activation_function", "gelu_new", L.ACTIVATIONS),
        "layer_norm_epsilon": f.number("layer_norm_epsilon", 1e-5),
        "tie_word_embeddings": f.boolean("tie_word_embeddings", True),
        "bos_token_id": f.token_id("bos_token_id", d.bos_token_id),
        "eos_token_id": eos,
        "pad_token_id": f.token_id("pad_token_id", eos),
        "initializer_range": f.number("initializer_range", 0.02),
    }
    try:
      return cls(**fields)
    except ValueError as e:  # a relation between fields, e.g. heads not dividing hidden_size
      raise ValueError(f"{source}: {e}") from None

  def to_hf_config(self) -> dict[str, Any]:
    """The HF `config.json` dict for this architecture."""
    # Run-length encode attention_layers back into HF's attention_types.
    types = []
    for kind in self.attention_layers:
      if types and types[-1][0] == [kind]:
        types[-1][1] += 1
      else:
        types.append([[kind], 1])
    return {
        "architectures": ["GPTNeoForCausalLM"],
        "model_type": "gpt_neo",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "num_layers": self.num_layers,
        "num_heads": self.num_heads,
        "intermediate_size": self.intermediate_size,
        "max_position_embeddings": self.max_position_embeddings,
        "attention_types": types,
        "window_size": self.window_size,
        "activation_function": self.activation_function,
        "layer_norm_epsilon": self.layer_norm_epsilon,
        "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "initializer_range": self.initializer_range,
        "resid_dropout": 0.0,
        "embed_dropout": 0.0,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
