"""MAUVE of the decoded texts against human text (paper App. C.3 Fig. 13, App. C.4 Table 4).

P, the human side, is each prompt document's own continuation: the
`max_new_tokens` tokens that follow the prompt in the document (the "ground-
truth sentences" App. C.3 compares with). Q is the texts one (config, method)
decoded from the same prompts. Both are featurised as prompt + continuation
(BOS included), each text by the final hidden state of its last token under one
model (`mauve.last_token_features`; by default the large decoding model, so the
ids need no re-encoding), then `mauve.compute_mauve` with mauve-text's
settings.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from trajax import data
from trajax.analysis import mauve

MAUVE_FIELDS = ("config", "method", "mauve", "mauve_star", "frontier_integral", "num_buckets",
                "pca_dims", "n_human", "n_generated")
NUMBERS = {
    "mauve": float, "mauve_star": float, "frontier_integral": float, "num_buckets": int,
    "pca_dims": int, "n_human": int, "n_generated": int
}


def human_texts(texts: Sequence[dict], docs: Sequence[data.Document], tokenizer, prompt_tokens: int,
                new_tokens: int) -> list[list[int]]:
  """[the prompt's ids (BOS included)] + the document's next `new_tokens` tokens, per prompt.

  Args:
    texts: decoded records (their doc and prompt_ids; each distinct prompt once).
    docs: the documents the prompts came from.
    tokenizer: the decoding tokenizer.
    prompt_tokens: document tokens in a prompt (after BOS).
    new_tokens: human tokens kept after the prompt (the generations' length).
  Returns:
    One id sequence per distinct prompt, in first-seen order; a document with
    nothing after its prompt gives none.
  """
  by_name = {d.name: d for d in docs}
  seen, out = set(), []
  for t in texts:
    key = (t["doc"], tuple(t["prompt_ids"]))
    if key in seen:
      continue
    seen.add(key)
    if t["doc"] not in by_name:
      raise ValueError(f"generated text of document {t['doc']!r}, which config.data.files no "
                       f"longer holds")
    ids = data.encode_prefix(tokenizer, by_name[t["doc"]].text, prompt_tokens + new_tokens)
    if ids[:prompt_tokens] != list(t["prompt_ids"][-prompt_tokens:]):
      raise ValueError(f"document {t['doc']!r}: its first {prompt_tokens} tokens are not the "
                       f"prompt the texts were decoded from (another tokenizer or prompt length?)")
    if len(ids) > prompt_tokens:
      out.append(list(t["prompt_ids"]) + ids[prompt_tokens:])
  return out


def mauve_rows(texts: Sequence[dict], human: Sequence[Sequence[int]], model, *,
               num_buckets: int = 0, explained_variance: float = mauve.EXPLAINED_VARIANCE,
               num_redo: int = mauve.NUM_REDO, max_iter: int = mauve.MAX_ITER,
               scaling: float = mauve.SCALING, seed: int = mauve.SEED, batch_size: int = 16,
               log: Callable[[str], None] | None = None) -> list[dict]:
  """MAUVE of every (config, method) group of `texts` against the human texts.

  Args:
    texts: decoded records (prompt_ids, generated_ids, config, method).
    human: `human_texts`.
    model: the featurising model (shares the decoding tokenizer).
    num_buckets: k-means clusters; 0 = mauve-text's "auto" (min(n) / 10, at least 2).
    explained_variance, num_redo, max_iter, scaling, seed: see `mauve.compute_mauve`.
    batch_size: texts per featurising call.
  Returns:
    Rows of `MAUVE_FIELDS`, groups in the texts' order.
  """
  if not human:
    raise ValueError("MAUVE: no human continuation (every prompt document ends at its prompt)")
  feats_h = mauve.last_token_features(model, human, batch_size)
  seqs = [list(t["prompt_ids"]) + list(t["generated_ids"]) for t in texts]
  feats_g = mauve.last_token_features(model, seqs, batch_size)
  groups: dict = {}
  for i, t in enumerate(texts):
    groups.setdefault((t["config"], t["method"]), []).append(i)
  rows = []
  for (config, method), idx in groups.items():
    res = mauve.compute_mauve(feats_h, feats_g[np.asarray(idx)], num_buckets or "auto",
                              explained_variance, num_redo, max_iter, scaling=scaling, seed=seed)
    rows.append({
        "config": config, "method": method, "mauve": res.mauve, "mauve_star": res.mauve_star,
        "frontier_integral": res.frontier_integral, "num_buckets": res.num_buckets,
        "pca_dims": res.pca_dims, "n_human": len(human), "n_generated": len(idx)
    })
    if log:
      log(f"MAUVE {config} {method}: {res.mauve:.4f} ({res.num_buckets} buckets)")
  return rows
