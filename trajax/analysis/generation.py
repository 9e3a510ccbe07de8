"""Sequence-level generation (paper §4, Appendix C): generate, score, corrupt, plot.

Protocol (§4.2): prompts are the first 5 tokens of documents (after BOS); 50 new
tokens (100 and 500 in App. C.5) are decoded from p' = λ1·p_s + λ2·p_l for each
of the five `sampling.CONFIGS`, greedy and nucleus, combining the smallest and
the largest model. The texts are then scored with every checkpoint of every
model: perplexity over the continuation tokens only, pooled over the texts of a
configuration (exp of the mean NLL over all their continuation tokens). The
corrupted-text experiment (§4.1, App. C.1) replaces 20..100% of the first 100
tokens of each document with random ids and scores them with final checkpoints.

Outputs are plain files: generated texts as JSONL (atomic writes), perplexity
rows as CSV, figures as PNG + the CSV of the plotted numbers, a Table-1-style
markdown table. `run(config, workdir)` is what `launch/decode.py` calls.
"""
from __future__ import annotations

import csv
import html
import json
import os
import time
from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402
from flax import nnx  # noqa: E402

from trajax import atomic, checkpoints, corruption, data, decoding, flops, sampling, trajectory  # noqa: E402
from trajax import workdir as workdir_lib  # noqa: E402
from trajax.analysis import common  # noqa: E402
from trajax.scoring import Scorer  # noqa: E402

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PPL_FIELDS = ("model", "step", "config", "method", "ppl", "n_texts", "n_tokens")
CORRUPT_FIELDS = ("model", "step", "fraction", "ppl", "n_seqs", "n_tokens")

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


def write_jsonl(records: Sequence[dict], path: str | os.PathLike) -> str:
  """Writes one JSON object per line, atomically (tmp file + os.replace)."""
  with atomic.atomic_open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return os.fspath(path)


def read_jsonl(path: str | os.PathLike, fields: Sequence[str] = ()) -> list[dict]:
  """Reads a JSONL file written by `write_jsonl`: one JSON object per non-blank line.

  Args:
    path: the file.
    fields: names every record must have.
  Returns:
    The records in file order. A damaged line (bad UTF-8 or JSON, not an object, a
    field missing) is a ValueError naming `path:line`.
  """
  with open(path, "rb") as f:
    raw = f.read()
  out = []
  for where, record in data.jsonl_objects(raw, os.fspath(path)):
    missing = [k for k in fields if k not in record]
    if missing:
      raise ValueError(f"{where}: missing field(s) {missing}")
    out.append(record)
  return out


def write_csv(rows: Sequence[dict], path: str | os.PathLike, fields: Sequence[str]) -> str:
  """Writes dict rows as CSV atomically; floats keep full precision."""
  with atomic.atomic_open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(fields))
    w.writeheader()
    for r in rows:
      w.writerow({
          k: repr(float(v)) if isinstance(v, (float, np.floating)) else v for k, v in r.items()
          if k in fields
      })
  return os.fspath(path)


# ---------------------------------------------------------------------------
# Scoring.


def _as_model(entry, load, dtype):
  return entry if isinstance(entry, nnx.Module) else load(entry, dtype=dtype)


def _checkpoint_list(name, entries):
  if isinstance(entries, Mapping):
    entries = sorted(entries.items())
  entries = [(int(s), p) for s, p in entries]
  if not entries:
    raise ValueError(f"score_texts: model {name!r} has no checkpoints")
  return entries


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


def score_texts(texts: Sequence[dict], checkpoint_paths_by_model: Mapping[str, object], *,
                dtype=jnp.float32, batch_size: int = 8, load=checkpoints.load,
                done: set | None = None, on_rows: Callable[[list[dict]], None] | None = None,
                log: Callable[[str], None] | None = None) -> list[dict]:
  """Perplexity of the generated continuations under every checkpoint.

  Each model's scorer is split once and `set_state` swaps in each checkpoint,
  so a trajectory compiles once per architecture.

  Args:
    texts: records from `generate_texts` (prompt_ids, generated_ids, config, method).
    checkpoint_paths_by_model: {model: [(step, path_or_model), ...]} or
      {model: {step: path_or_model}}; a path is read with `load(path, dtype=)`.
    dtype: parameter dtype for loading.
    batch_size: rows per scoring call.
    load: checkpoint loader (default `checkpoints.load`: HF or converted).
    done: (model, step) pairs to skip (resuming).
    on_rows: called with each checkpoint's new rows (e.g. to save progress).
  Returns:
    Rows {model, step, config, method, ppl, n_texts, n_tokens}; ppl = exp(mean
    NLL over every continuation token of the (config, method) group's texts).
  """
  if not texts:
    raise ValueError("score_texts: no texts")
  ids, mask, cont = _continuation_block(texts)
  groups = {}
  for i, t in enumerate(texts):
    groups.setdefault((t["config"], t.get("method", "")), []).append(i)
  rows, done = [], done or set()
  for name, entries in checkpoint_paths_by_model.items():
    scorer = None
    for step, entry in _checkpoint_list(name, entries):
      if (name, step) in done:
        continue
      t0 = time.perf_counter()
      model = _as_model(entry, load, dtype)
      if scorer is None:
        scorer = Scorer(model)
      else:
        scorer.set_state(model)
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
  return rows


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


def corrupted_rows(seqs: Sequence[np.ndarray], final_by_model: Mapping[str, object], *, vocab_ids,
                   fractions: Sequence[float] = corruption.PAPER_FRACTIONS,
                   max_length: int = corruption.PAPER_MAX_LENGTH, seed: int = 0, bos_id: int = 2,
                   steps: Mapping[str, int] | None = None, dtype=jnp.float32, batch_size: int = 8,
                   load=checkpoints.load) -> list[dict]:
  """Perplexity of corrupted documents under final checkpoints (paper Fig. 5 left).

  Sequence i at fraction f is `corruption.replace(seqs[i], f, vocab_ids,
  rng=corruption_seed(seed, f, i), max_length)` with BOS prepended; every token
  after BOS counts.

  Args:
    seqs: token id sequences (e.g. `document_tokens`).
    final_by_model: {model: path or model} of each final checkpoint.
    vocab_ids: replacement candidates (`corruption.candidate_ids`).
    fractions: shares replaced (paper 0.2..1.0).
    max_length: cap before corrupting (paper 100).
    seed: base seed.
    bos_id: prepended id (-1: none).
    steps: {model: step} recorded in the rows (optional).
  Returns:
    Rows {model, step, fraction, ppl, n_seqs, n_tokens}.
  """
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
  for name, entry in final_by_model.items():
    scorer = Scorer(_as_model(entry, load, dtype))
    for f, (ids, mask, cont) in blocks.items():
      nll = -scorer.score_blocks(ids, mask, batch_size=batch_size).astype(np.float64)[cont]
      rows.append({
          "model": name, "step": (steps or {}).get(name, ""), "fraction": float(f),
          "ppl": float(np.exp(nll.mean())), "n_seqs": len(seqs), "n_tokens": int(nll.size)
      })
  return rows


# ---------------------------------------------------------------------------
# Table and figures.


def _cell(text: str) -> str:
  return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ⏎ ").strip()


def example_table(texts: Sequence[dict], n_prompts: int = 2, fmt: str = "markdown") -> str:
  """Table 1 style: for the first `n_prompts` prompts, the generation of every (method, config).

  Args:
    texts: records from `generate_texts`.
    n_prompts: prompts shown.
    fmt: "markdown" or "html".
  Returns:
    The table as a string.
  """
  if fmt not in ("markdown", "html"):
    raise ValueError(f"fmt must be 'markdown' or 'html', got {fmt!r}")
  prompts = []
  for t in texts:
    key = (t["doc"], tuple(t["prompt_ids"]))
    if key not in prompts:
      prompts.append(key)
  out = []
  for key in prompts[:n_prompts]:
    sel = [t for t in texts if (t["doc"], tuple(t["prompt_ids"])) == key]
    if fmt == "markdown":
      out.append(f"**Prompt:** {_cell(sel[0]['prompt_text'])}\n")
      out.append("| method | config | generation |\n|---|---|---|")
      out += [f"| {t['method']} | {t['config']} | {_cell(t['generated_text'])} |" for t in sel]
      out.append("")
    else:
      out.append(f"<p><b>Prompt:</b> {html.escape(sel[0]['prompt_text'])}</p>")
      out.append("<table><tr><th>method</th><th>config</th><th>generation</th></tr>")
      out += [
          f"<tr><td>{html.escape(t['method'])}</td><td>{html.escape(t['config'])}</td>"
          f"<td>{html.escape(t['generated_text'])}</td></tr>" for t in sel
      ]
      out.append("</table>")
  return "\n".join(out)


def _png_csv(png_path) -> tuple[str, str]:
  png = os.fspath(png_path)
  if not png.endswith(".png"):
    raise ValueError(f"figure path must end in .png, got {png!r}")
  os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
  return png, png[:-len(".png")] + ".csv"


def _finish(fig, png):
  fig.tight_layout()
  try:
    atomic.save_figure(fig, png, dpi=110)
  finally:
    plt.close(fig)


def _sizes(rows, params_by_model):
  missing = sorted({r["model"] for r in rows} - set(params_by_model))
  if missing:
    raise ValueError(f"params_by_model lacks model(s) {missing}")
  return sorted({r["model"] for r in rows}, key=lambda m: params_by_model[m])


def plot_corrupted(png_path, rows: Sequence[dict], params_by_model: Mapping[str, float]):
  """Fig. 5 left: corrupted-text PPL vs model size, one line per fraction. Returns (png, csv)."""
  png, csv_path = _png_csv(png_path)
  models = _sizes(rows, params_by_model)
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  table = []
  for f in sorted({r["fraction"] for r in rows}):
    by = {r["model"]: r["ppl"] for r in rows if r["fraction"] == f}
    xs = [params_by_model[m] for m in models if m in by]
    ys = [by[m] for m in models if m in by]
    ax.plot(xs, ys, marker="o", label=f"{round(100 * f)}%")
    table += [{"model": m, "params": params_by_model[m], "fraction": f, "ppl": by[m]}
              for m in models if m in by]
  ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="perplexity",
         title="Corrupted texts (final checkpoints)")
  ax.legend(fontsize=7)
  _finish(fig, png)
  write_csv(table, csv_path, ("model", "params", "fraction", "ppl"))
  return png, csv_path


def _final_rows(rows):
  last = {}
  for r in rows:
    last[r["model"]] = max(last.get(r["model"], r["step"]), r["step"])
  return [r for r in rows if r["step"] == last[r["model"]]]


def _configs(rows):
  order = list(sampling.CONFIGS)
  return sorted({r["config"] for r in rows}, key=lambda c: order.index(c) if c in order else 99)


def plot_generated_scaling(png_path, rows: Sequence[dict], params_by_model: Mapping[str, float]):
  """Fig. 6 row 1: PPL of generated texts vs model size at final checkpoints.

  One panel per config, one line per method. Returns (png, csv).
  """
  png, csv_path = _png_csv(png_path)
  rows = _final_rows(rows)
  models = _sizes(rows, params_by_model)
  configs = _configs(rows)
  fig, axes = plt.subplots(1, len(configs), figsize=(3 * len(configs), 3), squeeze=False)
  table = []
  for ax, config in zip(axes[0], configs):
    for method in sorted({r["method"] for r in rows}):
      by = {r["model"]: r["ppl"] for r in rows if r["config"] == config and r["method"] == method}
      ms = [m for m in models if m in by]
      ax.plot([params_by_model[m] for m in ms], [by[m] for m in ms], marker="o", label=method)
      table += [{
          "config": config, "method": method, "model": m, "params": params_by_model[m], "ppl": by[m]
      } for m in ms]
    ax.set(xscale="log", title=config, xlabel="parameters")
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("perplexity")
  _finish(fig, png)
  write_csv(table, csv_path, ("config", "method", "model", "params", "ppl"))
  return png, csv_path


def plot_generated_trajectory(png_path, rows: Sequence[dict],
                              x_by_model: Mapping[str, Mapping[int, float]], method: str,
                              xlabel: str = "training FLOPs", logx: bool = True):
  """Fig. 6 row 2 (x = FLOPs) or Fig. 16 (x = validation PPL): PPL along trajectories.

  Args:
    rows: `score_texts` rows.
    x_by_model: {model: {step: x}}; checkpoints without an x are left out.
    method: which decoding method's texts.
  Returns:
    (png, csv).
  """
  png, csv_path = _png_csv(png_path)
  rows = [r for r in rows if r["method"] == method and r["model"] in x_by_model]
  if not rows:
    raise ValueError(f"no rows for method {method!r} and models {sorted(x_by_model)}")
  configs = _configs(rows)
  fig, axes = plt.subplots(1, len(configs), figsize=(3 * len(configs), 3), squeeze=False)
  table = []
  for ax, config in zip(axes[0], configs):
    for model in x_by_model:
      pts = sorted(
          (r["step"], r["ppl"]) for r in rows
          if r["config"] == config and r["model"] == model and r["step"] in x_by_model[model])
      if not pts:
        continue
      xs = [x_by_model[model][s] for s, _ in pts]
      ax.plot(xs, [p for _, p in pts], marker=".", label=model)
      table += [{"config": config, "model": model, "step": s, "x": x_by_model[model][s], "ppl": p}
                for s, p in pts]
    ax.set(xscale="log" if logx else "linear", title=f"{config} ({method})", xlabel=xlabel)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("perplexity")
  _finish(fig, png)
  write_csv(table, csv_path, ("config", "model", "step", "x", "ppl"))
  return png, csv_path


# ---------------------------------------------------------------------------
# The whole experiment.


def _params(model: trajectory.Model) -> int:
  """The manifest's params, else counted from the final checkpoint's architecture."""
  if model.params:
    return model.params
  fam, cfg = checkpoints.model_config(model.checkpoints[-1].path)
  return int(fam.param_count(cfg))


def _flops_by_step(model: trajectory.Model, seq_len: int) -> dict[int, float]:
  """Training FLOPs per step (PaLM's 6N + 12LHQT, as the paper; `trajax.flops`)."""
  _, cfg = checkpoints.model_config(model.checkpoints[-1].path)
  f, _ = flops.training_flops_for_config(cfg, model.steps, model.tokens_per_step, seq_len=seq_len)
  return dict(zip(model.steps, f.tolist()))


def _read_rows(path, fields):
  """The rows of a CSV that `write_csv` wrote with `fields`, numbers parsed; [] if absent.

  A damaged file (bad UTF-8 or CSV, a column missing, a row of the wrong width, a
  cell that is not the number its column holds) is a ValueError naming the file
  and line.
  """
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    lineno = raw.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start}") from None
  if not text.strip():  # nothing written yet: the rows are computed afresh
    return []
  parse = {
      "step": int, "ppl": float, "fraction": float, "n_texts": int, "n_tokens": int, "n_seqs": int
  }
  # Split on "\n" only: a cell may hold other line separators (U+2028) that csv keeps.
  reader = csv.reader(line + "\n" for line in text.split("\n"))
  rows, header = [], None
  try:
    for cells in reader:
      where = f"{path}:{reader.line_num}"
      if header is None:
        header = cells
        missing = [k for k in fields if k not in header]
        if missing:
          raise ValueError(f"{where}: header {header} lacks column(s) {missing}")
        continue
      if not cells:  # a blank line
        continue
      if len(cells) != len(header):
        raise ValueError(f"{where}: {len(cells)} values for the {len(header)} columns {header}")
      r = dict(zip(header, cells))
      for k in fields:
        if k in parse and not (k == "step" and r[k] == ""):  # rows without a step keep ""
          try:
            r[k] = parse[k](r[k])
          except ValueError:
            raise ValueError(f"{where}: column {k!r} is {r[k]!r}; expected "
                             f"{'an integer' if parse[k] is int else 'a number'}") from None
      rows.append({k: r[k] for k in fields})
  except csv.Error as e:  # NUL, an unclosed quote, a field over the size limit
    raise ValueError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
  return rows


def run(config, workdir: str) -> dict:
  """Generates with the small and large final checkpoints, scores, plots (paper §4).

  Outputs go to `{workdir}/decode`; validation PPL (Fig. 16) is read from the
  store under `config.store_dir` (default: `workdir`) when there is one.
  Steps, each skipped when its output already exists (so a rerun resumes):
  generations_{N}.jsonl → generated_ppl_{N}.csv (per checkpoint, saved as it
  goes) → corrupted_ppl.csv → figures and examples_{N}.md.

  Returns:
    {name: path} of everything written.
  """
  with workdir_lib.claim(os.path.join(workdir, "decode")):
    return _run_unlocked(config, workdir)


def _run_unlocked(config, workdir: str) -> dict:
  out_dir = os.path.join(workdir, "decode")
  os.makedirs(out_dir, exist_ok=True)
  traj = trajectory.load(config.trajectory, allow_outside_root=config.allow_outside_root)
  params = {m.name: _params(m) for m in traj.models}
  by_size = sorted(traj.models, key=lambda m: params[m.name])
  small_m = traj.model(config.small_model) if config.small_model else by_size[0]
  large_m = traj.model(config.large_model) if config.large_model else by_size[-1]
  tokenizer = checkpoints.load_tokenizer(config.tokenizer or large_m.checkpoints[-1].path)
  dtype = DTYPES[config.dtype]
  docs = data.read_documents(config.data.files, text_key=config.data.text_key,
                             gutenberg=config.data.gutenberg, log=logging.info)
  n = config.max_new_tokens
  out = {}

  gen_path = os.path.join(out_dir, f"generations_{n}.jsonl")
  if os.path.exists(gen_path):
    texts = read_jsonl(gen_path, fields=("config", "method", "seed", "prompt_ids", "generated_ids"))
    have = {(t["config"], t["method"], t["seed"]) for t in texts}
    want = {(c, m, config.seed) for c in config.configs for m in config.methods}
    if have != want:
      raise ValueError(f"{gen_path}: holds (config, method, seed) {sorted(have)} but the config "
                       f"asks for {sorted(want)}; use another workdir or delete the file")
    logging.info("reusing %d generated texts from %s", len(texts), gen_path)
  else:
    prompts = make_prompts(docs, tokenizer, config.prompt_tokens, config.data.max_docs or None)
    small = checkpoints.load(small_m.checkpoints[-1].path, dtype=dtype)
    large = checkpoints.load(large_m.checkpoints[-1].path, dtype=dtype)
    vocab = len(tokenizer) if config.vocab_size < 0 else (config.vocab_size or None)
    logging.info("generating: small=%s large=%s, %d prompts, %d new tokens", small_m.name,
                 large_m.name, len(prompts), n)
    texts = generate_texts(small, large, prompts, tokenizer, configs=tuple(config.configs),
                           methods=tuple(config.methods), max_new_tokens=n, top_p=config.top_p,
                           temperature=config.temperature, seed=config.seed,
                           batch_size=config.batch_size, eos_id=config.eos_id, vocab_size=vocab,
                           log=logging.info)
    del small, large
    write_jsonl(texts, gen_path)
  out["generations"] = gen_path
  out["examples"] = os.path.join(out_dir, f"examples_{n}.md")
  atomic.write_text(out["examples"], example_table(texts, config.table_prompts))

  ppl_path = os.path.join(out_dir, f"generated_ppl_{n}.csv")
  rows = _read_rows(ppl_path, PPL_FIELDS)
  ckpts = {
      m.name: [(c.step, c.path)
               for c in (m.checkpoints if config.score_all_checkpoints else m.checkpoints[-1:])
              ] for m in traj.models
  }

  def save(new):
    rows.extend(new)
    write_csv(rows, ppl_path, PPL_FIELDS)

  score_texts(texts, ckpts, dtype=dtype, batch_size=config.score_batch_size,
              done={(r["model"], r["step"]) for r in rows}, on_rows=save, log=logging.info)
  write_csv(rows, ppl_path, PPL_FIELDS)
  out["generated_ppl"] = ppl_path

  if config.corrupted.enabled:
    cpath = os.path.join(out_dir, "corrupted_ppl.csv")
    crows = _read_rows(cpath, CORRUPT_FIELDS)
    if not crows:
      seqs = document_tokens(docs, tokenizer, config.corrupted.max_length,
                             config.corrupted.max_docs or None)
      special = [
          i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                      tokenizer.unk_token_id) if i is not None
      ]
      vocab_ids = corruption.candidate_ids(len(tokenizer), exclude=special)
      crows = corrupted_rows(seqs, {m.name: m.checkpoints[-1].path for m in traj.models},
                             vocab_ids=vocab_ids, fractions=tuple(config.corrupted.fractions),
                             max_length=config.corrupted.max_length, seed=config.seed,
                             bos_id=tokenizer.bos_token_id,
                             steps={m.name: m.checkpoints[-1].step for m in traj.models
                                   }, dtype=dtype, batch_size=config.score_batch_size)
      write_csv(crows, cpath, CORRUPT_FIELDS)
    out["corrupted_ppl"] = cpath
    out["fig5"] = plot_corrupted(os.path.join(out_dir, "fig5_corrupted.png"), crows, params)[0]

  out["fig6_final"] = plot_generated_scaling(os.path.join(out_dir, f"fig6_final_{n}.png"), rows,
                                             params)[0]
  flops_by = {m.name: _flops_by_step(m, config.seq_len) for m in traj.models}
  valid = {
      m: v for m, v in (common.valid_ppl(config.store_dir or workdir) or {}).items() if m in params
  }
  for method in sorted({r["method"] for r in rows}):
    out[f"fig6_flops_{method}"] = plot_generated_trajectory(
        os.path.join(out_dir, f"fig6_flops_{method}_{n}.png"), rows, flops_by, method)[0]
    if valid:
      out[f"fig16_{method}"] = plot_generated_trajectory(
          os.path.join(out_dir, f"fig16_valid_ppl_{method}_{n}.png"), rows, valid, method,
          xlabel="validation perplexity", logx=True)[0]
  return out
