"""What every analysis shares: model sizes and FLOPs, validation PPL, tables and figures.

The analyses (`token_study`, the ICL study, the decoding study) read and write
through here, so each concern has one implementation:

  * `ModelInfo`: a model's sizes and training FLOPs per step, from the result
    store's metadata (`ModelInfo.from_store`) or, for a stage that loads the
    checkpoints itself, from the architecture of a loaded one (`from_config`);
  * `valid_ppl`: validation perplexity per (model, step) from a store;
  * CSV / JSONL / JSON outputs, written atomically (`trajax.atomic`), floats at
    full precision, read back with damage reported as `file:line`;
  * figures: matplotlib's Agg backend chosen once, here, and `save_figure`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless; set once, before pyplot is first imported anywhere in trajax
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from trajax import atomic, data, flops, store  # noqa: E402
from trajax.stream import DTYPES, dtype_of  # noqa: E402,F401  (re-exported for the studies)

FLOPS_METHODS = flops.FLOPS_METHODS

# ----------------------------------------------------------------------------
# Models: sizes and FLOPs
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """One model of a trajectory with what the analyses need.

  Attributes:
    name: model name (manifest / store).
    steps: [checkpoint] training steps, in order.
    tokens_per_step: tokens per optimizer step.
    param_count: all parameters (what "model size" means on an axis).
    flops_params: N of the FLOPs formulas.
    flops: {method: [checkpoint] float64 cumulative training FLOPs}.
    max_length: the model's context (max_position_embeddings), or 0 if unknown.
  """
  name: str
  steps: tuple[int, ...]
  tokens_per_step: int
  param_count: int
  flops_params: int
  flops: Mapping[str, np.ndarray]
  max_length: int = 0

  @classmethod
  def from_compute(cls, name: str, steps, tokens_per_step: int, compute: dict) -> "ModelInfo":
    """From the dict `trajax.flops.trajectory_compute` returns (what the store records)."""
    cfg = compute["architecture"]["config"]
    return cls(name, tuple(int(s) for s in steps), int(tokens_per_step),
               int(compute["param_count"]), int(compute["flops_params"]),
               {k: np.asarray(v, np.float64) for k, v in compute["flops"].items()},
               int(cfg.get("max_position_embeddings", 0)))

  @classmethod
  def from_config(cls, model, cfg, seq_len: int = 0) -> "ModelInfo":
    """A manifest model (`trajax.trajectory.Model`) with the config of one of its checkpoints."""
    return cls.from_compute(model.name, model.steps, model.tokens_per_step,
                            flops.trajectory_compute(model, cfg, seq_len))

  @classmethod
  def from_store(cls, reader: store.StoreReader, name: str) -> "ModelInfo":
    """A model of a result store (every checkpoint of it, done or not)."""
    meta = reader.meta(name)
    compute = {
        "architecture": reader.architecture(name), "param_count": reader.param_count(name),
        "flops_params": reader.flops_params(name), "flops": meta["flops"]
    }
    return cls.from_compute(name, meta["steps"], meta["tokens_per_step"], compute)

  def flops_at(self, method: str = "palm") -> dict[int, float]:
    """{step: cumulative training FLOPs}."""
    if method not in self.flops:
      raise ValueError(f"flops method {method!r}: expected one of {sorted(self.flops)}")
    return dict(zip(self.steps, self.flops[method].tolist()))

  def tokens_seen(self, step: int) -> int:
    return int(step) * self.tokens_per_step


def by_size(infos: Sequence[ModelInfo]) -> list[ModelInfo]:
  """Smallest model first (by parameter count, then name): never the manifest's order."""
  return sorted(infos, key=lambda i: (i.param_count, i.name))


# ----------------------------------------------------------------------------
# Validation perplexity from the store
# ----------------------------------------------------------------------------


def valid_ppl(store_dir: str) -> dict[str, dict[int, float]] | None:
  """{model: {step: validation PPL}} of the done checkpoints in the store under `store_dir`.

  Returns None (and logs why) when `store_dir` holds no store: figures against
  validation PPL are then left out.
  """
  try:
    reader = store.open(store_dir)
  except FileNotFoundError:
    logging.info("no store under %s: figures against validation PPL are left out", store_dir)
    return None
  out = {}
  for m in reader.models:
    steps = reader.done_steps(m)
    if len(steps):
      out[m] = dict(zip((int(s) for s in steps), reader.valid_ppl(m).tolist()))
  return out


# ----------------------------------------------------------------------------
# Tables: CSV, JSONL, JSON
# ----------------------------------------------------------------------------


def _cell(v):
  return repr(float(v)) if isinstance(v, (float, np.floating)) else v


def write_csv(rows: Sequence[Mapping], path: str | os.PathLike,
              fields: Sequence[str] | None = None) -> str:
  """Writes dict rows as CSV, atomically; floats keep full precision (repr).

  Args:
    rows: one dict per row.
    path: the file (its folder is created).
    fields: the columns, in order; default every key, in first-seen order. Keys
      of a row that are not columns are left out.
  Returns:
    `path`.
  """
  if fields is None:
    fields = list({k: None for r in rows for k in r})
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic.atomic_open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: _cell(v) for k, v in r.items()})
  return os.fspath(path)


def write_table(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """Writes list rows under `header` as CSV, atomically; floats at full precision."""
  return write_csv([dict(zip(header, r)) for r in rows], path, header)


def read_csv(path: str | os.PathLike, fields: Sequence[str] = (),
             parse: Mapping[str, Callable] | None = None) -> list[dict]:
  """The rows of a CSV written by `write_csv`; [] if the file is absent or empty.

  Args:
    path: the file.
    fields: columns every row must have (the header is checked).
    parse: {column: int or float}: cells converted; "" stays "" (an empty cell).
  Returns:
    One dict per row (every column; strings unless parsed). A damaged file (bad
    UTF-8 or CSV, a column missing, a row of the wrong width, a cell that is not
    the number its column holds) is a ValueError naming the file and line.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    lineno = raw.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start}") from None
  if not text.strip():
    return []
  parse = dict(parse or {})
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
      row = dict(zip(header, cells))
      for k, fn in parse.items():
        if k in row and row[k] != "":
          try:
            row[k] = fn(row[k])
          except ValueError:
            raise ValueError(f"{where}: column {k!r} is {row[k]!r}; expected "
                             f"{'an integer' if fn is int else 'a number'}") from None
      rows.append(row)
  except csv.Error as e:  # NUL, an unclosed quote, a field over the size limit
    raise ValueError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
  return rows


def write_jsonl(records: Sequence[dict], path: str | os.PathLike) -> str:
  """Writes one JSON object per line, atomically."""
  with atomic.atomic_open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return os.fspath(path)


def read_jsonl(path: str | os.PathLike, fields: Sequence[str] = ()) -> list[dict]:
  """The records of a JSONL file (one object per non-blank line), in file order.

  A damaged line (bad UTF-8 or JSON, not an object, one of `fields` missing) is
  a ValueError naming `path:line`.
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


def clean(obj):
  """NaN/inf -> None, numpy scalars -> Python, tuples -> lists: strict JSON for summaries."""
  if isinstance(obj, dict):
    return {str(k): clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [clean(v) for v in obj]
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  return obj


def write_summary(path: str | os.PathLike, summary: dict) -> dict:
  """Writes `clean(summary)` as strict JSON, atomically; returns the cleaned dict."""
  out = clean(summary)
  atomic.write_json(path, out, allow_nan=False)
  return out


# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------


def figure_paths(png_path: str | os.PathLike) -> tuple[str, str]:
  """(the .png, the .csv beside it holding the plotted numbers); creates the folder."""
  png = os.fspath(png_path)
  if not png.endswith(".png"):
    raise ValueError(f"figure path must end in .png, got {png!r}")
  os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
  return png, png[:-len(".png")] + ".csv"


def subplots(*args, **kwargs):
  """`plt.subplots` with the backend chosen above."""
  return plt.subplots(*args, **kwargs)


def save_figure(fig, png: str | os.PathLike, dpi: int = 120) -> str:
  """Lays out `fig`, writes it atomically as PNG and closes it."""
  fig.tight_layout()
  try:
    return atomic.save_figure(fig, png, dpi=dpi)
  finally:
    plt.close(fig)
