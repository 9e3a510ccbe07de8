"""Model families, keyed by Hugging Face `config.json`'s `model_type`."""
from __future__ import annotations

from trajax.models import gpt_neo, gpt_neox, llama, olmo, olmo2, opt

# model_type -> module with `Config.from_hf_config`, `create`, the conversion table
# (`hf_rules`, `normalize_hf_key`, `ignored_hf_keys`), `param_count` and `flops_params`.
FAMILIES = {
    "opt": opt,
    "gpt_neo": gpt_neo,
    "gpt_neox": gpt_neox,
    "llama": llama,
    "olmo": olmo,
    "olmo2": olmo2,
}


def family(model_type: str, source: str = "config.json"):
  """The family module for `model_type`; an unknown type names the supported ones."""
  if model_type not in FAMILIES:
    raise ValueError(f"{source}: model_type {model_type!r} is not supported; supported: "
                     f"{sorted(FAMILIES)}")
  return FAMILIES[model_type]


def set_attention_implementation(model, implementation: str | None):
  """Sets the attention kernel of every attention module of `model`.

  None: blockwise XLA on CPU, XLA elsewhere; "xla"; "cudnn" (flash attention on
  NVIDIA GPUs, bf16/fp16). The choice is static: the next jit call recompiles.
  """
  if implementation not in (None, "xla", "cudnn"):
    raise ValueError(f"attention implementation {implementation!r}: expected None, 'xla' or "
                     f"'cudnn'")
  from flax import nnx  # pylint: disable=g-import-not-at-top
  n = 0
  for _, module in nnx.iter_modules(model):
    if hasattr(module, "implementation"):
      module.implementation = implementation
      n += 1
  return n
