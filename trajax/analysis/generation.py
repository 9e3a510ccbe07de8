"""Sequence-level generation (paper §4, Appendix C): prompts, decoding, scoring texts.

Protocol (§4.2): prompts are the first 5 tokens of documents (after BOS); 50 new
tokens (100 and 500 in App. C.5) are decoded from p' = λ1·p_s + λ2·p_l for each
of the five `sampling.CONFIGS`, greedy and nucleus, combining a small and a
large model (paper: 125M and 30B). The texts are then scored with every checkpoint of every
model: perplexity over the continuation tokens only, pooled over the texts of a
configuration (exp of the mean NLL over all their continuation tokens). The
corrupted-text experiment (§4.1, App. C.1) replaces 20..100% of the first 100
tokens of each document of another corpus (the paper: OPT's opensubtitles
validation subset; by default the documents after the prompts' own,
`held_out_documents`) with random ids and scores them with final checkpoints.

Checkpoints are read through `trajax.stream.CheckpointStream` (HF or converted
directories, the next one read while this one scores, on a mesh when the stream
has one). Figures and the example table are in `generation_figures`; the whole
stage (`launch/decode.py`) is `decode_study.run`.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import numpy as np

from trajax import corruption, data, decoding, sampling, stream
from trajax.analysis import common

# Columns of generated_ppl_{N}.csv and corrupted_ppl.csv, and how their numbers parse.
PPL_FIELDS = ("model", "step", "config", "method", "ppl", "n_texts", "n_tokens")
CORRUPT_FIELDS = ("model", "step", "fraction", "ppl", "n_seqs", "n_tokens")
NUMBERS = {
    "step": int, "ppl": float, "fraction": float, "n_texts": int, "n_tokens": int, "n_seqs": int
}

# ---------------------------------------------------------------------------
# Prompts and generation.


def make_prompts(docs: Sequence[data.Document], tokenizer, prompt_tokens: int = 5,
                 max_docs: int | None = None, bos_id: int | None = None) -> list[dict]:
  """[BOS] + the first `prompt_tokens` tokens of each document.

  Args:
    docs: documents in order; those with fewer than `prompt_tokens` tokens are skipped.
    tokenizer: HF tokenizer (`__call__` and `decode`).
    prompt_tokens: tokens taken from each document (paper: 5).
    max_docs: at most this many prompts (None: all).
    bos_id: id prepended (default the tokenizer's bos_token_id; -1 for none).
  Returns:
    [{"doc", "prompt_ids", "prompt_text"}], prompt_ids including BOS.
  """
  bos = tokenizer.bos_token_id if bos_id is None else bos_id
  prefix = [] if bos is None or bos < 0 else [int(bos)]
  out = []
  for doc in docs:
    if max_docs is not None and len(out) >= max_docs:
      break
    ids = data.encode_prefix(tokenizer, doc.text, prompt_tokens)
    if len(ids) < prompt_tokens:
      continue
    out.append({
        "doc": doc.name, "prompt_ids": prefix + [int(i) for i in ids],
        "prompt_text": tokenizer.decode(ids)
    })
  if not out:
    raise ValueError(f"no document has {prompt_tokens} tokens to make a prompt from")
  return out


def generate_texts(small, large, prompts: Sequence[dict], tokenizer, *,
                   configs: Sequence[str] = tuple(sampling.CONFIGS),
                   methods: Sequence[str] = sampling.METHODS, max_new_tokens: int = 50,
                   top_p: float = 0.9, temperature: float = 1.0, seed: int = 0,
                   batch_size: int = 32, eos_id: int = 2, vocab_size: int | None = None,
                   log: Callable[[str], None] | None = None) -> list[dict]:
  """Decodes every prompt under every (config, method).

  Batches have a fixed size (the last one is filled with copies of its first
  prompt, dropped afterwards), so each model pair compiles once per method.

  Args:
    small, large: the two models (OPTForCausalLM).
    prompts: from `make_prompts`.
    configs: `sampling.CONFIGS` names.
    methods: "greedy" and/or "nucleus".
    max_new_tokens, top_p, temperature, seed, eos_id, vocab_size: see `decoding.generate`.
    batch_size: prompts decoded at once.
  Returns:
    One record per (config, method, prompt): config, lambdas, method, seed,
    max_new_tokens, doc, prompt_ids, prompt_text, generated_ids (EOS kept, no
    padding), generated_text, degenerate_steps (of its batch).
  """
  width = max(len(p["prompt_ids"]) for p in prompts)
  records = []
  for method in methods:
    for config in configs:
      t0 = time.perf_counter()
      for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        rows = len(chunk)
        chunk += [chunk[0]] * (batch_size - rows)
        ids = np.ones((batch_size, width), np.int32)
        mask = np.zeros((batch_size, width), bool)
        for i, p in enumerate(chunk):
          ids[i, width - len(p["prompt_ids"]):] = p["prompt_ids"]
          mask[i, width - len(p["prompt_ids"]):] = True
        g = decoding.generate(small, large, ids, mask, max_new_tokens=max_new_tokens,
                              lambdas=config, method=method, top_p=top_p, temperature=temperature,
                              seed=seed + start, eos_id=eos_id, vocab_size=vocab_size)
        for p, gen in zip(chunk[:rows], g.continuations()[:rows]):
          records.append({
              "config": config, "lambdas": list(sampling.CONFIGS[config]), "method": method,
              "seed": seed, "max_new_tokens": max_new_tokens, "top_p": top_p, "doc": p["doc"],
              "prompt_ids": list(p["prompt_ids"]), "prompt_text": p["prompt_text"],
              "generated_ids": [int(t) for t in gen], "generated_text": tokenizer.decode(gen),
              "degenerate_steps": g.degenerate_steps
          })
      if log:
        log(f"generated {len(prompts)} texts: {config} {method} "
            f"({time.perf_counter() - t0:.1f}s)")
  return records


# ---------------------------------------------------------------------------
# Scoring texts with checkpoints.


def _continuation_block(texts: Sequence[dict]):
  """Right-padded [texts, length] ids, mask, and the mask of continuation tokens."""
  seqs = [list(t["prompt_ids"]) + list(t["generated_ids"]) for t in texts]
  width = max(len(s) for s in seqs)
  ids = np.ones((len(seqs), width), np.int32)
  mask = np.zeros((len(seqs), width), bool)
  cont = np.zeros((len(seqs), width), bool)
  for i, (s, t) in enumerate(zip(seqs, texts)):
    if len(t["prompt_ids"]) < 1:
      raise ValueError(f"text {i}: empty prompt_ids; a continuation needs a context")
    ids[i, :len(s)] = s
    mask[i, :len(s)] = True
    cont[i, len(t["prompt_ids"]):len(s)] = True
  return ids, mask, cont


def _checkpoint_list(name, entries) -> list[tuple[int, str]]:
  if isinstance(entries, Mapping):
    entries = sorted(entries.items())
  entries = [(int(s), p) for s, p in entries]
  if not entries:
    raise ValueError(f"score_texts: model {name!r} has no checkpoints")
  return entries


def _scored(checkpoint_stream: stream.CheckpointStream, items, batch_size: int):
  """Yields (key, scorer) per (key, path): each checkpoint's weights in its architecture's scorer.

  A checkpoint that cannot be read raises its error (the stage stops; a rerun resumes).
  """
  if batch_size % checkpoint_stream.data_parallel:
    raise ValueError(f"batch_size={batch_size} must be a multiple of the mesh's data axis "
                     f"({checkpoint_stream.data_parallel})")
  for loaded in checkpoint_stream.iterate(items):
    if loaded.error is not None:
      raise loaded.error
    scorer = checkpoint_stream.scorer(loaded.model)
    loaded.model = None  # the scorer holds the weights; at most two checkpoints in memory
    yield loaded.key, scorer


def score_texts(texts: Sequence[dict], checkpoints_by_model: Mapping[str, object], *,
                checkpoint_stream: stream.CheckpointStream | None = None, batch_size: int = 8,
                done: set | None = None, on_rows: Callable[[list[dict]], None] | None = None,
                log: Callable[[str], None] | None = None) -> list[dict]:
  """Perplexity of the generated continuations under every checkpoint.

  The checkpoints are read through `checkpoint_stream` in the mapping's order
  (the next one read while this one scores); one scorer per architecture, so a
  trajectory compiles once.

  Args:
    texts: records from `generate_texts` (prompt_ids, generated_ids, config, method).
    checkpoints_by_model: {model: [(step, path), ...]} or {model: {step: path}}.
    checkpoint_stream: how checkpoints are read (dtype, mesh, prefetch); default
      float32 on one device.
    batch_size: rows per scoring call (a multiple of the stream's `data_parallel`).
    done: (model, step) pairs to skip (resuming).
    on_rows: called with each checkpoint's new rows (e.g. to save progress).
    log: progress messages.
  Returns:
    Rows {model, step, config, method, ppl, n_texts, n_tokens}; ppl = exp(mean
    NLL over every continuation token of the (config, method) group's texts).
  """
  if not texts:
    raise ValueError("score_texts: no texts")
  checkpoint_stream = checkpoint_stream or stream.CheckpointStream()
  ids, mask, cont = _continuation_block(texts)
  groups = {}
  for i, t in enumerate(texts):
    groups.setdefault((t["config"], t.get("method", "")), []).append(i)
  done = done or set()
  items = [((name, step), path) for name, entries in checkpoints_by_model.items()
           for step, path in _checkpoint_list(name, entries) if (name, step) not in done]
  rows = []
  t0 = time.perf_counter()
  for (name, step), scorer in _scored(checkpoint_stream, items, batch_size):
    lp = scorer.score_blocks(ids, mask, batch_size=batch_size).astype(np.float64)
    if not np.isfinite(lp[cont]).all():
      raise FloatingPointError(f"{name} step {step}: non-finite log-probs on generated tokens")
    new = []
    for (config, method), idx in groups.items():
      nll = -lp[idx][cont[idx]]
      new.append({
          "model": name, "step": step, "config": config, "method": method,
          "ppl": float(np.exp(nll.mean())), "n_texts": len(idx), "n_tokens": int(nll.size)
      })
    rows += new
    if on_rows:
      on_rows(new)
    if log:
      log(f"scored {len(texts)} texts with {name} step {step} "
          f"({time.perf_counter() - t0:.1f}s)")
    t0 = time.perf_counter()
  return rows


def held_out_documents(docs: Sequence[data.Document],
                       prompts: Sequence[dict]) -> list[data.Document]:
  """The documents after the last one a prompt came from: a corpus apart from the prompts.

  Args:
    docs: the documents `make_prompts` read, in its order.
    prompts: its records (their "doc" names).
  Returns:
    The documents that follow the last prompt's document ([] if none does).
  """
  used = {p["doc"] for p in prompts}
  last = max((i for i, d in enumerate(docs) if d.name in used), default=-1)
  return list(docs[last + 1:])


def document_tokens(docs: Sequence[data.Document], tokenizer, max_length: int = 100,
                    max_docs: int | None = None) -> list[np.ndarray]:
  """The first `max_length` token ids of each document (no BOS), int64 arrays."""
  out = []
  for doc in docs:
    if max_docs is not None and len(out) >= max_docs:
      break
    ids = data.encode_prefix(tokenizer, doc.text, max_length)
    if ids:
      out.append(np.asarray(ids, np.int64))
  return out


def corruption_seed(seed: int, fraction: float, index: int) -> int:
  """The corruption rng seed of sequence `index` at `fraction` (independent streams)."""
  return int(
      np.random.SeedSequence([int(seed), int(round(fraction * 1000)),
                              int(index)]).generate_state(1)[0])


def corrupted_rows(seqs: Sequence[np.ndarray], final_by_model: Mapping[str, str], *, vocab_ids,
                   fractions: Sequence[float] = corruption.PAPER_FRACTIONS,
                   max_length: int = corruption.PAPER_MAX_LENGTH, seed: int = 0, bos_id: int = 2,
                   steps: Mapping[str, int] | None = None,
                   checkpoint_stream: stream.CheckpointStream | None = None,
                   batch_size: int = 8) -> list[dict]:
  """Perplexity of corrupted documents under final checkpoints (paper Fig. 5 left).

  Sequence i at fraction f is `corruption.replace(seqs[i], f, vocab_ids,
  rng=corruption_seed(seed, f, i), max_length)` with BOS prepended; every token
  after BOS counts.

  Args:
    seqs: token id sequences (e.g. `document_tokens`).
    final_by_model: {model: path of its final checkpoint}, read in this order.
    vocab_ids: replacement candidates (`corruption.candidate_ids`).
    fractions: shares replaced (paper 0.2..1.0).
    max_length: cap before corrupting (paper 100).
    seed: base seed.
    bos_id: prepended id (-1: none).
    steps: {model: step} recorded in the rows (optional).
    checkpoint_stream: how checkpoints are read (default float32 on one device).
    batch_size: rows per scoring call (a multiple of the stream's `data_parallel`).
  Returns:
    Rows {model, step, fraction, ppl, n_seqs, n_tokens}, model by model.
  """
  checkpoint_stream = checkpoint_stream or stream.CheckpointStream()
  prefix = [] if bos_id is None or bos_id < 0 else [int(bos_id)]
  blocks = {}
  for f in fractions:
    corrupted = [
        prefix +
        corruption.replace(s, f, vocab_ids, corruption_seed(seed, f, i), max_length).tolist()
        for i, s in enumerate(seqs)
    ]
    blocks[f] = _continuation_block(
        [{"prompt_ids": c[:1], "generated_ids": c[1:]} for c in corrupted])
  rows = []
  for name, scorer in _scored(checkpoint_stream, list(final_by_model.items()), batch_size):
    for f, (ids, mask, cont) in blocks.items():
      nll = -scorer.score_blocks(ids, mask, batch_size=batch_size).astype(np.float64)[cont]
      rows.append({
          "model": name, "step": (steps or {}).get(name, ""), "fraction": float(f),
          "ppl": float(np.exp(nll.mean())), "n_seqs": len(seqs), "n_tokens": int(nll.size)
      })
  return rows


# ---------------------------------------------------------------------------
# The rows files.


def read_rows(path, fields: Sequence[str]) -> list[dict]:
  """The rows of a CSV this stage wrote with `fields` (`common.write_csv`); [] if absent.

  Numbers are parsed (`NUMBERS`); only `step` may be empty (corrupted rows without
  a step). A damaged file (bad UTF-8 or CSV, a column missing, a row of the
  wrong width, a cell that is not the number its column holds) is a ValueError
  naming the file.
  """
  parse = {k: fn for k, fn in NUMBERS.items() if k in fields}
  rows = common.read_csv(path, fields, parse=parse)
  for n, r in enumerate(rows, 1):
    for k in parse:
      if k != "step" and r[k] == "":
        raise ValueError(f"{path}: row {n}: column {k!r} is empty; expected "
                         f"{'an integer' if parse[k] is int else 'a number'}")
  return [{k: r[k] for k in fields} for r in rows]
