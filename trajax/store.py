"""The result store: per-token log-probs of every checkpoint, on disk, resumable.

Layout under `{workdir}/store/` (tensorstore, zarr):
  dataset.json               hashes of the token blocks and tokenizer, block shape
  tokens.npz                 the token blocks themselves (tokens, mask)
  {model}/meta.json          steps, tokens_per_step, params, checkpoint paths, and
                             what analyses need without opening a checkpoint:
                             architecture (family + config), param_count,
                             flops_params (N), seq_len (T), flops per step by method
  {model}/logprobs           float32 [checkpoint, rows * block_len], NaN fill
  {model}/done               int8 [checkpoint]: 0 pending, 1 done, 2 failed

A checkpoint's row is written completely first and its flag second; each flag
is its own chunk file, which tensorstore replaces atomically, so a killed run
never leaves a partial row marked done. Rerunning skips done rows. Reopening a
store with another dataset, tokenizer or trajectory is an error.
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import tensorstore as ts

from trajax import atomic, faults
from trajax.store_format import (
    DATASET_FIELDS,
    DERIVED_FIELDS,
    DONE,
    FAILED,  # noqa: F401
    MAX_CHUNK_VALUES,
    META_FIELDS,
    PENDING,  # noqa: F401
    VALIDATION,  # noqa: F401
    check_model,
    read_dataset,
    read_json,
    zarr)


@dataclasses.dataclass
class ModelRows:
  """The arrays of one model in the store."""
  name: str
  meta: dict
  logprobs: ts.TensorStore
  done: ts.TensorStore

  @property
  def steps(self) -> list[int]:
    return list(self.meta["steps"])

  def status(self) -> np.ndarray:
    return self.done.read().result()

  def write(self, index: int, logprobs_row: np.ndarray) -> None:
    """Writes checkpoint `index`'s row, then marks it done (in that order)."""
    row = np.asarray(logprobs_row, np.float32).reshape(-1)
    if row.shape[0] != self.logprobs.shape[1]:
      raise ValueError(f"{self.name}: row has {row.shape[0]} values, store expects "
                       f"{self.logprobs.shape[1]}")
    self._write(self.logprobs, index, row)
    faults.point(f"store.row:{self.name}:{index}")  # row on disk, flag not yet
    self._write(self.done, index, np.int8(DONE))
    faults.point(f"store.done:{self.name}:{index}")

  def mark_failed(self, index: int) -> None:
    self._write(self.done, index, np.int8(FAILED))

  def _write(self, array: ts.TensorStore, index: int, value) -> None:
    """One chunk write; tensorstore replaces the chunk file atomically, so a failed write
    leaves the old chunk (and every other row) as it was."""
    try:
      array[index].write(value).result()
    except ValueError as e:  # tensorstore reports OS errors as ValueError
      if atomic.is_no_space(e):
        path = array.kvstore.path if array.kvstore is not None else self.name
        raise atomic.no_space_error(f"{path} (model {self.name!r}, checkpoint {index})", e) from e
      raise


def _open_or_create_dataset(root: str, dataset: dict, tokens_bt: np.ndarray,
                            mask_bt: np.ndarray) -> None:
  """A dataset's `dataset.json` + `tokens.npz` under `root`; hashes must match on reopen."""
  os.makedirs(root, exist_ok=True)
  meta_path = os.path.join(root, "dataset.json")
  if os.path.exists(meta_path):
    old = read_json(meta_path, DATASET_FIELDS)
    for key in ("dataset_hash", "tokenizer_hash", "block_shape"):
      if old.get(key) != dataset.get(key):
        raise ValueError(f"{meta_path}: this store was written for {key}={old.get(key)!r}, "
                         f"but this run has {dataset.get(key)!r}; use a new workdir")
    return
  with atomic.atomic_open(os.path.join(root, "tokens.npz"), "wb") as f:
    np.savez(f, tokens=tokens_bt, mask=mask_bt)
  atomic.write_json(meta_path, dataset)


def _rows_arrays(name: str, mdir: str, meta: dict, n_values: int, where: str) -> ModelRows:
  """A model's logprobs/done arrays in `mdir` (created when absent), shapes checked."""
  n_ckpt = len(meta["steps"])
  if os.path.exists(os.path.join(mdir, "done")):
    rows = ModelRows(name, meta, zarr(os.path.join(mdir, "logprobs"), "", 0, 0, 0, False),
                     zarr(os.path.join(mdir, "done"), "", 0, 0, 0, False))
    check_model(where, meta, rows.done)
    if tuple(rows.logprobs.shape) != (n_ckpt, n_values):
      raise ValueError(f"{where}: the model's logprobs array in {mdir} has shape "
                       f"{list(rows.logprobs.shape)}, expected {[n_ckpt, n_values]}; the store "
                       f"is damaged: use a new workdir")
    return rows
  os.makedirs(mdir, exist_ok=True)
  chunk = min(n_values, MAX_CHUNK_VALUES)
  # logprobs first, done last: a done array means the logprobs array exists.
  lp = zarr(os.path.join(mdir, "logprobs"), "<f4", (n_ckpt, n_values), (1, chunk), "NaN", True)
  done = zarr(os.path.join(mdir, "done"), "|i1", (n_ckpt,), (1,), 0, True)
  return ModelRows(name, meta, lp, done)


class Store:
  """Read/write access to `{workdir}/store`. Use `create` to write, `open` to read.

  The analysis dataset (the tokens whose trajectories are studied) lives at the
  store's root; the validation dataset, when the sweep has one, in `validation/`
  with the same layout (its own hashes, tokens and per-model rows). Model
  metadata is shared: `{model}/meta.json` at the root.
  """
  def __init__(self, root: str, dataset: dict, validation: dict | None = None):
    self.root = root
    self.dataset = dataset
    self.validation = validation

  @classmethod
  def create(cls, workdir: str, dataset: dict, tokens_bt: np.ndarray, mask_bt: np.ndarray,
             validation: tuple[dict, np.ndarray, np.ndarray] | None = None):
    """Opens or creates the store; `dataset` holds the hashes that must match on reopen.

    Args:
      workdir: the store goes to `{workdir}/store`.
      dataset: the analysis dataset's metadata (`DATASET_FIELDS`).
      tokens_bt, mask_bt: its token blocks.
      validation: optional (metadata with `subsets`, tokens, mask) of the
        validation dataset, scored beside the analysis one.
    """
    root = os.path.join(workdir, "store")
    _open_or_create_dataset(root, dataset, tokens_bt, mask_bt)
    if validation is not None:
      _open_or_create_dataset(os.path.join(root, VALIDATION), *validation)
    return cls(root, dataset, validation[0] if validation is not None else None)

  def model(self, name: str, meta: dict) -> ModelRows:
    """Opens or creates a model's analysis rows; `meta['steps']` must match on reopen."""
    if name == VALIDATION:
      raise ValueError(f"model name {name!r} is reserved for the store's validation dataset; "
                       f"rename the model in the manifest")
    mdir = os.path.join(self.root, name)
    meta_path = os.path.join(mdir, "meta.json")
    n_values = int(np.prod(self.dataset["block_shape"]))
    if os.path.exists(meta_path):
      old = read_json(meta_path, META_FIELDS)
      if old["steps"] != list(meta["steps"]):
        raise ValueError(f"{meta_path}: model {name!r} was stored with steps {old['steps']}, "
                         f"this trajectory has {list(meta['steps'])}; use a new workdir")
      if old.get("architecture",
                 meta.get("architecture")) != meta.get("architecture", old.get("architecture")):
        raise ValueError(f"{meta_path}: model {name!r} was stored with architecture "
                         f"{old['architecture']}, this trajectory's checkpoints have "
                         f"{meta['architecture']}; use a new workdir")
      refreshed = dict(old, **{k: meta[k] for k in (*DERIVED_FIELDS, "architecture") if k in meta})
      if refreshed != old:  # e.g. a store written before trajax recorded sizes and FLOPs
        atomic.write_json(meta_path, refreshed)
        old = refreshed
      return _rows_arrays(name, mdir, old, n_values, meta_path)
    rows = _rows_arrays(name, mdir, dict(meta), n_values, meta_path)
    atomic.write_json(meta_path, dict(meta))  # last: its presence means the arrays exist
    return rows

  def validation_rows(self, name: str, meta: dict) -> ModelRows | None:
    """A model's validation rows (created when absent), or None without a validation dataset."""
    if self.validation is None:
      return None
    n_values = int(np.prod(self.validation["block_shape"]))
    return _rows_arrays(f"{VALIDATION}/{name}", os.path.join(self.root, VALIDATION, name), meta,
                        n_values, os.path.join(self.root, name, "meta.json"))


class StoreReader:
  """Read-only view for notebooks and the analyses (`trajax.store.open`)."""
  def __init__(self, workdir: str):
    self.root = os.path.join(workdir, "store")
    if not os.path.exists(os.path.join(self.root, "dataset.json")):
      raise FileNotFoundError(f"{os.path.join(self.root, 'dataset.json')}: no trajax store in "
                              f"{workdir!r}")
    self.dataset, self.tokens, self.mask = read_dataset(self.root)
    vroot = os.path.join(self.root, VALIDATION)
    self.validation = None
    if os.path.exists(os.path.join(vroot, "dataset.json")):
      self.validation = read_json(os.path.join(vroot, "dataset.json"), DATASET_FIELDS)
      n_rows = self.validation["block_shape"][0]
      for name, (lo, hi) in self.validation.get("subsets", {}).items():
        if hi > n_rows:
          raise ValueError(f"{os.path.join(vroot, 'dataset.json')}: subset {name!r} ends at row "
                           f"{hi}, past the dataset's {n_rows} rows")
    self._meta = {}
    for name in sorted(os.listdir(self.root)):
      path = os.path.join(self.root, name, "meta.json")
      if os.path.exists(path):
        meta = read_json(path, META_FIELDS)
        check_model(path, meta, zarr(os.path.join(self.root, name, "done"), "", 0, 0, 0, False))
        self._meta[name] = meta

  @property
  def models(self) -> list[str]:
    """Model names, smallest first (by parameter count when recorded, then by name)."""
    return sorted(self._meta, key=lambda n: (self._size(n), n))

  def _size(self, model: str) -> int:
    meta = self._meta[model]
    return int(meta.get("param_count") or meta.get("params") or 0)

  def meta(self, model: str) -> dict:
    if model not in self._meta:
      raise KeyError(f"{self.root}: no model {model!r}; models: {self.models}")
    return self._meta[model]

  def steps(self, model: str) -> np.ndarray:
    return np.asarray(self.meta(model)["steps"])

  def tokens_seen(self, model: str) -> np.ndarray:
    return self.steps(model) * int(self.meta(model)["tokens_per_step"])

  def _dir(self, model: str, dataset: str) -> str:
    self.meta(model)
    if dataset == "analysis":
      return os.path.join(self.root, model)
    if dataset == VALIDATION and self.validation is not None:
      return os.path.join(self.root, VALIDATION, model)
    raise ValueError(f"{self.root}: no dataset {dataset!r}; datasets: {self.datasets}")

  @property
  def datasets(self) -> list[str]:
    """"analysis" (the studied tokens), and "validation" when the sweep scored one."""
    return ["analysis"] + ([VALIDATION] if self.validation is not None else [])

  @property
  def validation_subsets(self) -> list[str]:
    return sorted((self.validation or {}).get("subsets", {}))

  def status(self, model: str, dataset: str = "analysis") -> np.ndarray:
    """[checkpoint] int8 flags (PENDING, DONE, FAILED) of `model`'s rows in `dataset`."""
    mdir = self._dir(model, dataset)
    if not os.path.exists(os.path.join(mdir, "done")):  # validation added after this model
      return np.zeros(len(self.meta(model)["steps"]), np.int8)
    return zarr(os.path.join(mdir, "done"), "", 0, 0, 0, False).read().result()

  def logprobs(self, model: str, done_only: bool = True, dataset: str = "analysis") -> np.ndarray:
    """[checkpoint, rows * block_len] float32 (rows of unfinished checkpoints dropped).

    Token index k is block row k // block_len, position k % block_len. Safe while a
    sweep is writing: the done flags are read before the rows, and a writer sets a
    flag only after its row is on disk, so every row returned is complete.
    """
    done = self.status(model, dataset) == DONE  # flags first (see above)
    mdir = self._dir(model, dataset)
    if not os.path.exists(os.path.join(mdir, "done")):
      n_values = int(np.prod((self.validation or self.dataset)["block_shape"]))
      lp = np.full((done.shape[0], n_values), np.nan, np.float32)
    else:
      lp = zarr(os.path.join(mdir, "logprobs"), "", 0, 0, 0, False).read().result()
    return lp[done] if done_only else lp

  @property
  def tokenizer_path(self) -> str | None:
    """The tokenizer directory the blocks were made with (its hash is `tokenizer_hash`)."""
    return self.dataset.get("tokenizer_path")

  def done_steps(self, model: str) -> np.ndarray:
    return self.steps(model)[self.status(model) == DONE]

  def _recorded(self, model: str, field: str):
    meta = self.meta(model)
    if field not in meta:
      raise ValueError(f"{os.path.join(self.root, model, 'meta.json')}: no {field!r} recorded "
                       f"(a store written by an older trajax, or no readable config.json); "
                       f"rerun launch/score.py on this workdir: done rows are kept and the "
                       f"metadata is completed")
    return meta[field]

  def architecture(self, model: str) -> dict:
    """{"family": model_type, "config": the family config's fields} of `model`."""
    return self._recorded(model, "architecture")

  def param_count(self, model: str) -> int:
    """All parameters of `model` (the manifest's `params` when it set them)."""
    return int(self._recorded(model, "param_count"))

  def flops_params(self, model: str) -> int:
    """N of the FLOPs formulas (see `trajax.flops`)."""
    return int(self._recorded(model, "flops_params"))

  def flops(self, model: str, method: str = "palm", done_only: bool = True) -> np.ndarray:
    """[checkpoint] float64 cumulative training FLOPs ("palm" or "6nd"; see `trajax.flops`)."""
    by_method = self._recorded(model, "flops")
    if method not in by_method:
      raise ValueError(f"flops method {method!r}: the store records {sorted(by_method)}")
    flops_c = np.asarray(by_method[method], np.float64)
    return flops_c[self.status(model) == DONE] if done_only else flops_c

  @property
  def valid_ppl_source(self) -> str:
    """Which tokens `valid_ppl` averages: "validation", or "analysis" in a store without one."""
    return VALIDATION if self.validation is not None else "analysis"

  def valid_ppl(self, model: str, subset: str | None = None) -> np.ndarray:
    """Validation perplexity per done (analysis) checkpoint: exp(mean NLL over its tokens).

    With a validation dataset: over every scored token of its subsets together
    (token-weighted; the paper aggregates OPT's validation subsets), or of one
    `subset`; NaN for a checkpoint whose validation row is not done yet. Without
    one (stores of older runs, or sweeps given no validation data) it falls back
    to the analysis tokens themselves, which makes plots against validation PPL
    circular: `valid_ppl_source` says which.
    """
    done = self.status(model) == DONE
    if self.validation is None:
      if subset is not None:
        raise ValueError(f"{self.root}: no validation dataset, so no subset {subset!r}")
      lp = self.logprobs(model)
    else:
      vdone = self.status(model, VALIDATION) == DONE
      lp = self.logprobs(model, done_only=False, dataset=VALIDATION)
      if subset is not None:
        subsets = self.validation.get("subsets", {})
        if subset not in subsets:
          raise ValueError(f"{self.root}: no validation subset {subset!r}; subsets: "
                           f"{sorted(subsets)}")
        lo, hi = subsets[subset]
        block_len = self.validation["block_shape"][1]
        lp = lp[:, lo * block_len:hi * block_len]
      lp = np.where(vdone[:, None], lp, np.nan)[done]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN, said in the doc
      return np.exp(-np.nanmean(lp.astype(np.float64), axis=1))


def open(workdir: str) -> StoreReader:  # pylint: disable=redefined-builtin
  """The store under `workdir` for reading."""
  return StoreReader(workdir)
