"""GPT-Neo (Black et al. 2021) in flax.nnx, named as Hugging Face's GPTNeoForCausalLM.

Submodule names follow transformers' `modeling_gpt_neo.py` (`transformer.wte`,
`h.{i}.attn.attention.q_proj`, `mlp.c_fc`, `ln_f`, ...). What differs from OPT,
all as the reference computes it:
  * layers alternate global and local attention (`attention_layers`, expanded
    from `attention_types`). A local layer lets slot i see slot j when
    0 <= i - j < window_size (HF: `tril(ones) ^ tril(ones, -window_size)`), i.e.
    the token itself and the window_size - 1 before it. The window is on cache
    slots, as HF's `bias[key_len - query_len : key_len, :key_len]` is;
  * NO 1/sqrt(head_dim) scaling, and the attention logits in float32 whatever
    the parameter dtype (HF casts q and k to float32);
  * q/k/v projections without bias, out_proj with bias; gelu_new MLP; learned
    positions without offset; tied head.

One scan serves both attention kinds: each layer's window is a scanned input
(`window_size` for local layers, `GLOBAL_WINDOW` for global ones).

Positions. trajax numbers the real tokens of a row 0, 1, ... whatever the left
padding (`positions(mask) = max(cumsum(mask) - 1, 0)`), as HF's `generate`
does. HF's forward with only an `attention_mask` uses `arange(length)`: the same
for unpadded and right-padded rows; for left-padded rows pass HF
`position_ids = max(cumsum(mask) - 1, 0)` to get trajax's numbers.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


KVCache = L.KVCache


def window_mask(mask_b1ts, dist_ts, window):
  """`mask_b1ts` restricted to keys at most `window - 1` slots before the query."""
  return mask_b1ts & (dist_ts < window)[None, None]


class GPTNeoSelfAttention(nnx.Module):
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs, n: int):
    d, std = cfg.hidden_size, cfg.initializer_range
    self.num_heads = cfg.num_heads
    self.implementation = None
    lin = lambda axes, bias: L.Linear(d, d, axes=axes, use_bias=bias, dtype=dtype, rngs=rngs,
                                      init_std=std, num_stacked=n)
    self.k_proj = lin(("embed", "heads"), False)
    self.v_proj = lin(("embed", "heads"), False)
    self.q_proj = lin(("embed", "heads"), False)
    self.out_proj = lin(("heads", "embed"), True)

  def _heads(self, x_btd):
    b, t, d = x_btd.shape
    return x_btd.reshape(b, t, self.num_heads, d // self.num_heads)

  def __call__(self, x_btd, mask_b1ts, kv_cache=None, cache_index=None):
    """Unscaled self-attention; with `kv_cache=(k_bshd, v_bshd)` writes this block there."""
    q_bthd = self._heads(self.q_proj(x_btd))
    k_bthd = self._heads(self.k_proj(x_btd))
    v_bthd = self._heads(self.v_proj(x_btd))
    k_bshd, v_bshd, kv_cache = L.write_cache(kv_cache, k_bthd, v_bthd, cache_index)
    # HF computes q.k in float32 (unscaled logits of GPT-Neo grow large).
    f32 = jnp.float32
    out_bthd = L.attention(q_bthd.astype(f32), k_bshd.astype(f32), v_bshd.astype(f32), mask_b1ts,
                           self.implementation)
    b, t = x_btd.shape[:2]
    return self.out_proj(out_bthd.reshape(b, t, -1).astype(x_btd.dtype)), kv_cache


class GPTNeoAttention(nnx.Module):
  """HF's wrapper (`attn.attention`); kept for the parameter names."""
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs, n: int):
    self.attention = GPTNeoSelfAttention(cfg, dtype, rngs, n)


class GPTNeoMLP(nnx.Module):
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs, n: int):
    d, f, std = cfg.hidden_size, cfg.ffn_dim, cfg.initializer_range
    self.act = cfg.activation_function
    self.c_fc = L.Linear(d, f, axes=("embed", "mlp"), use_bias=True, dtype=dtype, rngs=rngs,
                         init_std=std, num_stacked=n)
    self.c_proj = L.Linear(f, d, axes=("mlp", "embed"), use_bias=True, dtype=dtype, rngs=rngs,
                           init_std=std, num_stacked=n)

  def __call__(self, x_btd):
    return self.c_proj(L.activation(self.act)(self.c_fc(x_btd)))


class GPTNeoBlock(nnx.Module):
  """All blocks at once: parameters [layers, ...]; `__call__` sees one slice."""
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs, n: int):
    d, eps = cfg.hidden_size, cfg.layer_norm_epsilon
    self.ln_1 = L.LayerNorm(d, elementwise_affine=True, eps=eps, dtype=dtype, num_stacked=n)
    self.attn = GPTNeoAttention(cfg, dtype, rngs, n)
    self.ln_2 = L.LayerNorm(d, elementwise_affine=True, eps=eps, dtype=dtype, num_stacked=n)
    self.mlp = GPTNeoMLP(cfg, dtype, rngs, n)

  def __call__(self, x_btd, mask_b1ts, kv_cache=None, cache_index=None):
    """`mask_b1ts` already carries this layer's window (see `window_mask`)."""
    h, kv_cache = self.attn.attention(self.ln_1(x_btd), mask_b1ts, kv_cache, cache_index)
    x_btd = x_btd + h
    return x_btd + self.mlp(self.ln_2(x_btd)), kv_cache


class GPTNeoModel(nnx.Module):
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs):
    self.cfg = cfg
    std = cfg.initializer_range
    self.wte = L.Embed(cfg.vocab_size, cfg.hidden_size, axes=("vocab", "embed"), dtype=dtype,
                       rngs=rngs, init_std=std)
    self.wpe = L.Embed(cfg.max_position_embeddings, cfg.hidden_size, axes=(None, "embed"),
                       dtype=dtype, rngs=rngs, init_std=std)
    self.h = GPTNeoBlock(cfg, dtype, rngs, cfg.num_layers)
    self.ln_f = L.LayerNorm(cfg.hidden_size, elementwise_affine=True, eps=cfg.layer_norm_epsilon,
                            dtype=dtype)

  def layer(self, i: int) -> GPTNeoBlock:
    """Block `i` as a standalone module (for per-layer parity tests)."""
    graphdef, state = nnx.split(self.h)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))

  def __call__(self, tokens_bt, positions_bt, mask_b1ts, dist_ts, kv_cache: KVCache | None = None,
               cache_index=None):
    """Hidden states [batch, length, hidden] (and the updated cache).

    `mask_b1ts` is the causal + padding mask; `dist_ts` = query slot - key slot,
    from which each layer's window is cut.
    """
    x = self.wte(tokens_bt)
    x = x + self.wpe(positions_bt).astype(x.dtype)
    windows_l = jnp.asarray(self.cfg.layer_windows())

    def call(layer, h, window, kv):
      return layer(h, window_mask(mask_b1ts, dist_ts, window), kv, cache_index)

    x, kv_cache = L.scan_layers(self.h, x, kv_cache, call, windows_l)
    return self.ln_f(x), kv_cache


class GPTNeoForCausalLM(L.CausalLM):
  """GPT-Neo with a (normally tied) LM head. Scoring uses `hidden_states` + `head_matrix`."""
  def __init__(self, cfg: GPTNeoConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.config = cfg
    self.transformer = GPTNeoModel(cfg, dtype, rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = L.Linear(cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"),
                              use_bias=False, dtype=dtype, rngs=rngs,
                              init_std=cfg.initializer_range)
    else:
      self.lm_head = None

  def layer_stack(self, tokens_bt, positions_bt, mask_b1ts, segment_ids_bt):
    """The transformer without a cache: hidden states [batch, length, hidden]."""
    del segment_ids_bt  # in `mask_b1ts`; local layers also need query - key distances
    slots = jnp.arange(tokens_bt.shape[1])
    h, _ = self.transformer(tokens_bt, positions_bt, mask_b1ts, slots[:, None] - slots[None, :])
    return h

  def head_matrix(self):
    """The output projection as [vocab, hidden]."""
    if self.lm_head is None:
      return self.transformer.wte.embedding[...]
    return self.lm_head.kernel[...].T

  def cache_dims(self) -> tuple[int, int, int]:
    cfg = self.config
    return cfg.num_layers, cfg.num_heads, cfg.head_dim

  def forward_cached(self, tokens_bt, positions_bt, key_valid_bs, cache: KVCache, cache_index):
    """Runs `tokens_bt` written at cache slots [cache_index, cache_index + length).

    Args:
      tokens_bt: [batch, length] token ids (a prompt block or one new token).
      positions_bt: [batch, length] positions of those tokens (see `positions`).
      key_valid_bs: [batch, max_len] which cache slots hold real tokens once this
        block is written (the caller owns it, so rows may be left-padded).
      cache: the KVCache; cache_index: scalar int slot of the first token.
    Returns:
      (hidden [batch, length, hidden], updated cache).
    """
    t = tokens_bt.shape[1]
    key_slots = jnp.arange(cache.k_lbshd.shape[2])
    query_slots = cache_index + jnp.arange(t)
    attn_mask = L.causal_mask(query_slots, key_slots, key_valid_bs)
    return self.transformer(tokens_bt, positions_bt, attn_mask,
                            query_slots[:, None] - key_slots[None, :], cache, cache_index)


def create(cfg: GPTNeoConfig, *, dtype=jnp.float32, seed: int | None = 0) -> GPTNeoForCausalLM:
  """A randomly initialised model (seed) or a deterministic placeholder (seed=None)."""
  rngs = nnx.Rngs(params=seed) if seed is not None else None
  return GPTNeoForCausalLM(cfg, dtype=dtype, rngs=rngs)


def param_breakdown(cfg: GPTNeoConfig) -> dict[str, int]:
  """Parameters of HF `GPTNeoForCausalLM` (a tied head counted once).

  Returns {"total", "non_embedding", "flops", ...parts}: `non_embedding`
  leaves out wte, wpe and an untied head (Kaplan et al.); `flops` (N for
  `trajax.flops`) leaves out only the lookup tables that no matmul uses — wpe,
  and wte when the head is untied.
  """
  d, f, v = cfg.hidden_size, cfg.ffn_dim, cfg.vocab_size
  per_layer = (
      3 * d * d + d * d + d  # q/k/v (no bias), out_proj
      + d * f + f + f * d + d  # c_fc, c_proj
      + 2 * 2 * d)  # ln_1, ln_2
  parts = {
      "wte": v * d, "wpe": cfg.max_position_embeddings * d, "layers": cfg.num_layers * per_layer,
      "ln_f": 2 * d, "lm_head": 0 if cfg.tie_word_embeddings else v * d
  }
  parts["total"] = sum(parts.values())
  parts["non_embedding"] = parts["layers"] + parts["ln_f"]
  parts["flops"] = parts["total"] - parts["wpe"] - (parts["wte"] if parts["lm_head"] else 0)
  return parts


# ---------------------------------------------------------------------------
# Conversion table: trajax parameter path <- HF state-dict key, hook ("T": transpose
# torch's Linear [out, in] to our kernel [in, out]); '{i}' = stacked layer index.
_LAYER_LINEARS = [("attn.attention.q_proj", False), ("attn.attention.k_proj", False),
                  ("attn.attention.v_proj", False), ("attn.attention.out_proj", True),
                  ("mlp.c_fc", True), ("mlp.c_proj", True)]


def hf_rules(cfg: GPTNeoConfig) -> list[tuple[str, str, str | None]]:
  """(our parameter path, HF key, hook) for every parameter of `cfg`'s model."""
  t = "transformer"
  rules = [(f"{t}.wte.embedding", f"{t}.wte.weight", None),
           (f"{t}.wpe.embedding", f"{t}.wpe.weight", None),
           (f"{t}.ln_f.scale", f"{t}.ln_f.weight", None),
           (f"{t}.ln_f.bias", f"{t}.ln_f.bias", None)]
  for name, bias in _LAYER_LINEARS:
    rules.append((f"{t}.h.{name}.kernel", f"{t}.h.{{i}}.{name}.weight", "T"))
    if bias:
      rules.append((f"{t}.h.{name}.bias", f"{t}.h.{{i}}.{name}.bias", None))
  for name in ("ln_1", "ln_2"):
    rules += [(f"{t}.h.{name}.scale", f"{t}.h.{{i}}.{name}.weight", None),
              (f"{t}.h.{name}.bias", f"{t}.h.{{i}}.{name}.bias", None)]
  if not cfg.tie_word_embeddings:
    rules.append(("lm_head.kernel", "lm_head.weight", "T"))
  return rules


def normalize_hf_key(key: str) -> str:
  """A bare GPTNeoModel checkpoint saves `wte.weight`, `h.0...`: add `transformer.`."""
  if key.split(".", 1)[0] in ("wte", "wpe", "h", "ln_f"):
    return "transformer." + key
  return key


def ignored_hf_keys(cfg: GPTNeoConfig) -> set[str]:
  """Keys that carry no parameter of ours: the tied head, and the causal-mask buffers
  (`attn.attention.bias`, `masked_bias`) that older transformers saved per layer."""
  keys = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
  for i in range(cfg.num_layers):
    keys |= {
        f"transformer.h.{i}.attn.attention.bias", f"transformer.h.{i}.attn.attention.masked_bias"
    }
  return keys


Config = GPTNeoConfig


def param_count(cfg) -> int:
  """All parameters, as HF's numel sum."""
  return param_breakdown(cfg)["total"]


def flops_params(cfg) -> int:
  """N of the FLOPs formulas: matmul weights (no lookup-only tables)."""
  return param_breakdown(cfg)["flops"]
