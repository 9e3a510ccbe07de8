"""Score every checkpoint of every model of a trajectory into the result store.

`run(config, workdir)` is what `launch/score.py` calls. While checkpoint k is
scored, checkpoint k+1 is read in a background thread, so a sweep's wall time
approaches max(read, compute) rather than their sum; the log reports both.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
from absl import logging

from trajax import checkpoints, data, flops, store, stream, trajectory
from trajax import workdir as workdir_lib


def prepare_blocks(config, tokenizer) -> data.Blocks:
  """The dataset's token blocks from `config.data`."""
  docs = data.read_documents(config.data.files, text_key=config.data.text_key,
                             gutenberg=config.data.gutenberg, log=logging.info)
  blocks = data.make_blocks(docs, tokenizer, block_len=config.data.block_len,
                            max_docs=config.data.max_docs or None,
                            min_tokens=config.data.min_tokens)
  logging.info("data: %d blocks x %d tokens, %d context-token pairs", *blocks.tokens.shape,
               blocks.n_predictions)
  return blocks


def parse_subsets(spec: str) -> list[tuple[str, str]]:
  """"name=glob,..." -> [(name, glob)]; a bare glob gives one subset per matching file.

  Names must be unique; a glob that matches nothing is an error naming it.
  """
  out = []
  for entry in (e.strip() for e in spec.split(",")):
    if not entry:
      continue
    if "=" in entry:
      name, pattern = (x.strip() for x in entry.split("=", 1))
      if not name or not pattern:
        raise ValueError(f"config.validation.files: {entry!r} is not 'name=glob'")
      out.append((name, pattern))
      continue
    paths = sorted(glob.glob(entry))
    if not paths:
      raise ValueError(f"config.validation.files: {entry!r} matches no file")
    out += [(os.path.splitext(os.path.basename(p))[0], p) for p in paths]
  names = [n for n, _ in out]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"config.validation.files: subset name(s) {dup} given twice")
  return out


def prepare_validation(config, tokenizer) -> tuple[data.Blocks, dict[str, list[int]]] | None:
  """The validation blocks of every subset in `config.validation`, and {subset: [lo, hi)} rows.

  None when `config.validation.files` is empty.
  """
  v = config.get("validation")
  if v is None or not v.files:
    return None
  parts, subsets, row = [], {}, 0
  for name, pattern in parse_subsets(v.files):
    docs = data.read_documents(pattern, text_key=v.text_key, gutenberg=v.gutenberg,
                               log=logging.info)
    b = data.make_blocks(docs, tokenizer, block_len=v.block_len or config.data.block_len,
                         max_docs=v.max_docs or None, min_tokens=config.data.min_tokens)
    parts.append(b)
    subsets[name] = [row, row + b.tokens.shape[0]]
    row += b.tokens.shape[0]
    logging.info("validation subset %s: %d blocks, %d context-token pairs", name, b.tokens.shape[0],
                 b.n_predictions)
  blocks = data.Blocks(np.concatenate([b.tokens for b in parts]),
                       np.concatenate([b.mask for b in parts]), [n for b in parts for n in b.names])
  return blocks, subsets


def _dataset_meta(blocks: data.Blocks, tokenizer, tok_path: str, **extra) -> dict:
  return {
      "dataset_hash": blocks.hash(), "tokenizer_hash": data.tokenizer_hash(tokenizer),
      "block_shape": list(blocks.tokens.shape), "documents": blocks.names,
      "n_predictions": blocks.n_predictions, "tokenizer_path": os.path.abspath(tok_path), **extra
  }


@dataclasses.dataclass(frozen=True)
class SweepTiming:
  """Where one model's sweep spent its time (what the run log's summary line reports)."""
  model: str
  checkpoints: int
  wall_s: float
  read_s: float  # sum of the checkpoint reads, each timed in the reading thread
  compute_s: float  # sum of scoring + writing the rows
  read_bytes: int
  prefetch: bool

  @property
  def overlap(self) -> float:
    """Share of the shorter of read and compute hidden behind the other (0..1)."""
    hidden = max(0.0, self.read_s + self.compute_s - self.wall_s)
    return hidden / max(min(self.read_s, self.compute_s), 1e-9)

  @property
  def wall_over_bound(self) -> float:
    """wall / max(read, compute): 1.0 is perfect overlap."""
    return self.wall_s / max(self.read_s, self.compute_s, 1e-9)


def _sync(name: str) -> None:
  """All processes reach this point before any goes on (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _is_writer() -> bool:
  """Process 0 alone writes the store; every process computes."""
  return jax.process_index() == 0


def _writer_first(name: str, fn):
  """Process 0 runs `fn` (which may create files) before the others run it (to open them)."""
  out = fn() if _is_writer() else None
  _sync(name)
  return out if _is_writer() else fn()


def run(config, workdir: str, timings: list | None = None) -> store.StoreReader:
  """Scores the trajectory in `config.trajectory` on `config.data` into `workdir`.

  Returns the store reader. Raises on the first bad checkpoint unless
  `config.on_error == "continue"`, which marks it failed and goes on.
  Everything that can be checked before scoring is: the manifest, the data,
  every model's vocabulary against the token ids, the disk space, the lock.
  If `timings` is a list, one `SweepTiming` per model swept is appended to it.
  """
  traj = trajectory.load(config.trajectory, allow_outside_root=config.allow_outside_root)
  tok_path = config.tokenizer or traj.models[0].checkpoints[0].path
  tokenizer = checkpoints.load_tokenizer(tok_path)
  blocks = prepare_blocks(config, tokenizer)
  validation = prepare_validation(config, tokenizer)
  if validation is None:
    logging.warning("no validation data (config.validation.files): validation PPL will be "
                    "measured on the analysed tokens themselves, which makes plots against it "
                    "circular")
  for b in (blocks, *(validation[:1] if validation else ())):
    _check_vocab(traj, b, tok_path)
  datasets = {
      "analysis": _dataset_meta(blocks, tokenizer, tok_path), store.VALIDATION: (_dataset_meta(
          validation[0], tokenizer, tok_path, subsets=validation[1]) if validation else None)
  }
  args = (config, workdir, traj, datasets, blocks, validation and validation[0], timings)
  if not _is_writer():
    return _run_locked(*args)
  need = _bytes_to_write(workdir, traj, blocks, validation and validation[0])
  with workdir_lib.claim(workdir, need_bytes=need):
    return _run_locked(*args)


def _bytes_to_write(workdir: str, traj, blocks, validation_blocks) -> int:
  """Bytes of the rows this run still has to write (a resumed run skips done rows)."""
  sizes = {"analysis": blocks.tokens.size * 4}
  if validation_blocks is not None:
    sizes[store.VALIDATION] = validation_blocks.tokens.size * 4
  try:
    reader = store.open(workdir)
  except (OSError, ValueError):  # no store yet (or an unreadable one, reported when opened)
    return sum(sizes.values()) * sum(len(m.checkpoints) for m in traj.models)
  total = 0
  for m in traj.models:
    for dataset, row_bytes in sizes.items():
      try:
        total += row_bytes * int((reader.status(m.name, dataset) != store.DONE).sum())
      except (KeyError, OSError, ValueError):
        total += row_bytes * len(m.checkpoints)
  return total


def _check_vocab(traj, blocks, tok_path):
  """Every model must embed every token id of the data (config.json only, no weights)."""
  max_id = int(blocks.tokens[blocks.mask].max())
  for m in traj.models:
    path = m.checkpoints[-1].path
    try:
      _, cfg = checkpoints.model_config(path)
    except (OSError, ValueError):
      continue  # reported per checkpoint when the sweep reaches it
    if max_id >= cfg.vocab_size:
      raise ValueError(f"{path}/config.json: vocab_size {cfg.vocab_size} is smaller than the "
                       f"tokenizer at {tok_path} needs (data has token id {max_id})")


def _run_locked(config, workdir, traj, datasets, blocks, validation_blocks,
                timings) -> store.StoreReader:
  validation = None
  if validation_blocks is not None:
    validation = (datasets[store.VALIDATION], validation_blocks.tokens, validation_blocks.mask)
  st = _writer_first(
      "store created", lambda: store.Store.create(workdir, datasets["analysis"], blocks.tokens,
                                                  blocks.mask, validation=validation))
  checkpoint_stream = stream.CheckpointStream(config.dtype, config.mesh_shape,
                                              config.get("prefetch", True),
                                              config.head_chunk_tokens)
  if checkpoint_stream.mesh is not None:
    mesh = checkpoint_stream.mesh
    logging.info("mesh %s over %d devices in %d process(es)", dict(mesh.shape), mesh.size,
                 jax.process_count())
  failed = []
  for m in traj.models:
    meta = model_meta(m, config.get("seq_len", 0))
    rows = _writer_first(f"model {m.name} opened", lambda: st.model(m.name, meta))
    vrows = _writer_first(f"model {m.name} validation opened",
                          lambda: st.validation_rows(m.name, rows.meta))
    # A checkpoint is done when its row of every dataset is.
    pending = [
        i for i, s in enumerate(rows.status())
        if s != store.DONE or (vrows is not None and vrows.status()[i] != store.DONE)
    ]
    logging.info("model %s: %d checkpoints, %d to score", m.name, len(m.checkpoints), len(pending))
    jobs = [(rows, blocks)] + ([(vrows, validation_blocks)] if vrows is not None else [])
    model_failed, timing = _sweep_model(config, jobs, checkpoint_stream, m, pending)
    failed += model_failed
    if timing is not None and timings is not None:
      timings.append(timing)
  if failed:
    logging.warning("%d checkpoint(s) failed: %s", len(failed), failed)
  _sync("sweep done")
  return store.open(workdir)


def model_meta(m: trajectory.Model, seq_len: int = 0) -> dict:
  """What the store records of a model: its checkpoints, sizes and FLOPs per step.

  The architecture is read from a checkpoint's config.json (no weights), so
  analyses of the store never open checkpoint directories.
  """
  meta = {
      "steps": m.steps, "tokens_per_step": m.tokens_per_step, "params": m.params,
      "paths": [c.path for c in m.checkpoints]
  }
  errors = []
  for c in reversed(m.checkpoints):  # they share one architecture; the last is the usual one
    try:
      _, cfg = checkpoints.model_config(c.path)
      break
    except (OSError, ValueError) as e:
      errors.append(str(e))
  else:  # every checkpoint fails; the sweep reports each (or raises on the first)
    logging.warning("model %s: no readable config.json (%s); sizes and FLOPs not recorded", m.name,
                    errors[0])
    return meta
  meta.update(flops.trajectory_compute(m, cfg, seq_len))
  return meta


def _sweep_model(config, jobs, checkpoint_stream, m,
                 pending) -> tuple[list[str], SweepTiming | None]:
  """Scores `pending` checkpoints of model `m` from the stream (next read while this scores).

  `jobs` is [(rows, blocks)] for the analysis dataset, then the validation one
  when there is one; a checkpoint's row of a dataset already done is not rescored.
  With `config.prefetch` off, each checkpoint is read only once the previous one
  is written (the sequential baseline `bench/sweep_bench.py` compares against).
  Returns the failed checkpoints ("model@step") and the model's timing.
  """
  failed = []
  t_start, read_s, compute_s, read_bytes = time.perf_counter(), 0.0, 0.0, 0
  n_predictions = sum(b.n_predictions for _, b in jobs)
  items = [(i, m.checkpoints[i].path) for i in pending]
  for n, loaded in enumerate(checkpoint_stream.iterate(items)):
    i = loaded.key
    ckpt = m.checkpoints[i]
    try:
      if loaded.error is not None:
        raise loaded.error
      t0 = time.perf_counter()
      scorer = checkpoint_stream.scorer(loaded.model)
      loaded.model = None  # the scorer holds the weights now
      results = []  # (rows, log-probs) of every dataset whose row is not done yet
      for rows, blocks in jobs:
        if rows.status()[i] == store.DONE:
          continue
        lp = scorer.score_blocks(blocks.tokens, blocks.mask, batch_size=config.batch_size)
        predicted = blocks.mask[:, 1:] & blocks.mask[:, :-1]
        if not np.isfinite(lp[:, 1:][predicted]).all():
          raise FloatingPointError(f"{ckpt.path}: scoring produced NaN or Inf log-probs for "
                                   f"real tokens; nothing was written for this checkpoint")
        results.append((rows, lp))
    except (OSError, ValueError, FloatingPointError) as e:
      if config.on_error != "continue":
        raise
      logging.error("%s step %d: FAILED (%s)", m.name, ckpt.step, e)
      if _is_writer():
        for rows, _ in jobs:
          rows.mark_failed(i)
      failed.append(f"{m.name}@{ckpt.step}")
      continue
    if _is_writer():  # validation first: an analysis row marked done has its validation row
      for rows, lp in reversed(results):
        rows.write(i, lp)
    _sync(f"{m.name} step {ckpt.step} written")
    dt = time.perf_counter() - t0
    n_bytes = loaded.read_bytes
    read_s += loaded.read_s
    read_bytes += n_bytes
    compute_s += dt
    elapsed = time.perf_counter() - t_start
    eta = elapsed / (n + 1) * (len(pending) - n - 1)
    ppl = float(np.exp(-np.nanmean(results[-1][1].astype(np.float64)))) if results else np.nan
    logging.info(
        "%s step %d: valid PPL %.3f | %.0f tok/s | read %.1fs, %.0f MB/s (waited "
        "%.1fs) | %d/%d, ETA %.0fs", m.name, ckpt.step, ppl, n_predictions / dt, loaded.read_s,
        n_bytes / 1e6 / max(loaded.read_s, 1e-9), loaded.wait_s, n + 1, len(pending), eta)
  if not pending:
    return failed, None
  timing = SweepTiming(m.name, len(pending),
                       time.perf_counter() - t_start, read_s, compute_s, read_bytes,
                       checkpoint_stream.prefetch)
  logging.info(
      "%s: wall %.1fs, read %.1fs (%.0f MB/s), compute %.1fs, overlap %.0f%%, "
      "wall/max(read, compute) %.2f", m.name, timing.wall_s, read_s,
      read_bytes / 1e6 / max(read_s, 1e-9), compute_s, 100 * timing.overlap, timing.wall_over_bound)
  return failed, timing
