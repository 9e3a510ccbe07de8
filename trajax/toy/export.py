"""trajax model -> Hugging Face checkpoint directory (the inverse of `trajax.checkpoints`).

The family's conversion table (`hf_rules`: our path <- HF key, hook) is applied
backwards: stacked layer parameters are split per layer (`{i}`), "T" kernels are
transposed back to torch's [out, in]. The directory holds `config.json` and
`model.safetensors` (float32), plus the tokenizer files if given, so both
`transformers.OPTForCausalLM.from_pretrained(dir)` and `trajax.load_hf(dir)`
read it.

The directory is written under a temporary name (`trajax.atomic.temporary_name`)
and renamed into place, so a run killed mid-export never leaves a directory under
the final name: a checkpoint directory that exists is complete.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
from flax import nnx

from trajax import atomic, models, safetensors_io

# Tokenizer files an HF tokenizer directory may hold (whichever exist are copied).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json")


def hf_state_dict(model) -> dict[str, np.ndarray]:
  """The model's parameters as an HF state dict {key: float32 host array}.

  Args:
    model: a trajax model with `.config` (e.g. `OPTForCausalLM`).
  Returns:
    {HF key: array}, one entry per layer for stacked parameters, torch layout.
  """
  cfg = model.config
  fam = models.family(cfg.to_hf_config()["model_type"])
  flat = {
      ".".join(str(p) for p in path): var
      for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }
  tensors = {}
  for ours, hf_key, hook in fam.hf_rules(cfg):
    if ours not in flat:
      raise ValueError(f"export: the model has no parameter {ours!r} required by the "
                       f"{cfg.family} conversion table")
    a = np.asarray(flat.pop(ours).get_value(), np.float32)
    parts = ([(hf_key.format(i=i), a[i]) for i in range(a.shape[0])]
             if "{i}" in hf_key else [(hf_key, a)])
    for key, part in parts:
      tensors[key] = np.ascontiguousarray(part.T if hook == "T" else part)
  if flat:
    raise ValueError(f"export: parameters without a conversion rule: {sorted(flat)}")
  return tensors


def save_hf_checkpoint(model, out_dir: str | os.PathLike,
                       tokenizer_dir: str | os.PathLike | None = None) -> str:
  """Writes `model` as a Hugging Face checkpoint directory, atomically.

  Args:
    model: a trajax model (e.g. `OPTForCausalLM`) with `.config.to_hf_config()`.
    out_dir: the checkpoint directory; an existing one is replaced.
    tokenizer_dir: optional HF tokenizer directory whose files are copied in.
  Returns:
    out_dir as a string.
  """
  out_dir = os.fspath(out_dir).rstrip(os.sep)
  tmp = atomic.temporary_name(out_dir)  # a killed run's is swept by the study's claim
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  hf_config = dict(model.config.to_hf_config(), torch_dtype="float32", dtype="float32")
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  safetensors_io.save(hf_state_dict(model), os.path.join(tmp, "model.safetensors"),
                      metadata={"format": "pt"})
  if tokenizer_dir is not None:
    tokenizer_dir = os.fspath(tokenizer_dir)
    found = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer_dir, n))]
    if not found:
      raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer files; expected some of "
                              f"{list(TOKENIZER_FILES)}")
    for name in found:
      shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(tmp, name))
  if os.path.exists(out_dir):
    old = tmp + ".old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old)
  else:
    os.replace(tmp, out_dir)
  return out_dir
