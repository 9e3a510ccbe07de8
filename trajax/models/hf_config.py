"""Typed reads of a parsed Hugging Face `config.json`: each error names the file and the field.

A researcher's config.json may have been edited by hand: a size written as a
string, a boolean as "false", a field set to null. Coercing with `int()` and
`bool()` accepts some of these silently (`bool("false")` is True, `int(16.9)` is
16), so each reader here takes exactly the JSON type the field has in the
configs transformers writes, and checks its range.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# Token ids and positions are int32 in trajax.
MAX_SIZE = 2**31 - 1
# Far above any released model (OPT-175B has 96 layers); bounds the per-layer tables
# (conversion keys, attention kinds) built from the config.
MAX_LAYERS = 2**16
_REQUIRED = object()


class HFFields:
  """Reads fields of one `config.json` dict (`hf`), naming `source` in every error."""
  def __init__(self, hf: dict[str, Any], source: str):
    self.hf = hf
    self.source = source

  def error(self, key: str, expected: str) -> ValueError:
    return ValueError(f"{self.source}: field {key!r} is {self.hf.get(key)!r}; expected {expected}")

  def _get(self, keys: str | Sequence[str], default):
    """(key, value) of the first of `keys` present; aliases must agree when both are set."""
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    present = [k for k in keys if k in self.hf]
    if not present:
      if default is _REQUIRED:
        raise ValueError(f"{self.source}: missing field {keys[0]!r}")
      return keys[0], default
    for other in present[1:]:
      if self.hf[other] != self.hf[present[0]]:
        raise ValueError(f"{self.source}: fields {present[0]!r} = {self.hf[present[0]]!r} and "
                         f"{other!r} = {self.hf[other]!r} are two names for one setting and "
                         f"disagree")
    return present[0], self.hf[present[0]]

  def integer(self, keys, default=_REQUIRED, *, lo: int = 1, hi: int = MAX_SIZE,
              nullable: bool = False) -> int | None:
    """An integer in [lo, hi]; an integral float (2048.0) is accepted, a string is not.

    `keys` may list aliases (GPT-Neo's `num_layers`/`num_hidden_layers`); with
    `nullable`, null (or absence with default None) gives None.
    """
    key, value = self._get(keys, default)
    if value is None and nullable:
      return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
      value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
      raise self.error(key, f"an integer in [{lo}, {hi}]")
    return value

  def number(self, key: str, default=_REQUIRED, *, lo: float = 0.0, hi: float = math.inf,
             lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] with `lo_open`)."""
    key, value = self._get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or
        not math.isfinite(value) or not lo <= value <= hi or (lo_open and value == lo)):
      raise self.error(key, f"a finite number in {'(' if lo_open else '['}{lo}, {hi}]")
    return float(value)

  def boolean(self, key: str, default=_REQUIRED) -> bool:
    """JSON true or false (not "false", not 0)."""
    key, value = self._get(key, default)
    if not isinstance(value, bool):
      raise self.error(key, "true or false")
    return value

  def string(self, key: str | Sequence[str], default=_REQUIRED,
             choices: Sequence[str] | None = None) -> str:
    """A string, one of `choices` when given."""
    key, value = self._get(key, default)
    if not isinstance(value, str) or (choices is not None and value not in choices):
      raise self.error(key, f"one of {sorted(choices)}" if choices is not None else "a string")
    return value

  def token_id(self, key: str, default: int, *, null: int | None = None) -> int:
    """A token id; a list (several EOS ids) gives its first; null gives `null` (default
    `default`): the Config fields are ints, and only the pad id is used (decoding)."""
    _, value = self._get(key, default)
    if isinstance(value, list):
      if not value:
        raise self.error(key, "a token id or a non-empty list of them")
      value = value[0]
    if value is None:
      return default if null is None else null
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
      raise self.error(key, f"a token id in [0, {MAX_SIZE}], a list of them, or null")
    return value

  def mapping(self, key: str) -> dict[str, Any]:
    """An object, or {} when absent or null."""
    value = self.hf.get(key)
    if value is None:
      return {}
    if not isinstance(value, dict):
      raise self.error(key, "an object")
    return value


# Fields a config.json may carry that do not change the forward pass: provenance, dtype,
# training-only settings (dropout, init), generation defaults and task-head labels.
NEUTRAL_FIELDS = frozenset({
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "name_or_path", "_attn_implementation_autoset", "use_cache", "initializer_range",
    "attention_dropout", "tokenizer_class", "output_attentions", "output_hidden_states",
    "return_dict", "torchscript", "id2label", "label2id", "problem_type", "max_length",
    "min_length", "do_sample", "temperature", "top_k", "top_p", "num_beams", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "early_stopping", "num_return_sequences",
    "sep_token_id", "decoder_start_token_id", "task_specific_params", "finetuning_task", "prefix",
    "chunk_size_feed_forward"
})
# Generic PretrainedConfig fields (`to_dict()` writes them all) that are neutral only at these
# values: an encoder-decoder, cross-attention or pruned heads would change the model.
NEUTRAL_AT = {
    "is_encoder_decoder": False, "is_decoder": False, "add_cross_attention": False,
    "tie_encoder_decoder": False, "pruned_heads": {}, "cross_attention_hidden_size": None
}


def reject_unknown(hf: dict[str, Any], known, source: str, family: str) -> None:
  """Every field of `hf` must be read (`known`) or neutral; anything else is a ValueError.

  A setting trajax does not implement must never be dropped silently: the model
  would load and score something other than what the checkpoint was trained as.
  """
  unknown = sorted(k for k in set(hf) - set(known) - NEUTRAL_FIELDS
                   if k not in NEUTRAL_AT or hf[k] != NEUTRAL_AT[k])
  if unknown:
    raise ValueError(f"{source}: field(s) {unknown} are not supported by trajax's {family} "
                     f"family (it reads {sorted(known)}); a setting it cannot reproduce is "
                     f"refused rather than ignored")
