"""The toy study's trainer: a family of small OPT models on the toy world's corpus.

`train_family(config, workdir)` writes, under `workdir`:
  tokenizer/                       byte-level BPE trained once on the train split
  data/{train,validation,analysis,corrupted}.jsonl  the documents, {"text": ...} per line
  tasks/<task>/task.json           the world's BIG-bench multiple-choice tasks
  checkpoints/<model>/step<N>/     HF checkpoints (config, safetensors, tokenizer)
  checkpoints/<model>/train_log.jsonl, train_config.json
  trajectory.json                  the manifest (`trajax.trajectory`)

Every model sees the same sequences in the same order (one data seed) and is
checkpointed on the same schedule, dense early and sparse late like OPT's
(the paper's App. A, Table 2). A model whose final checkpoint exists, written
under the same training config, is reused; a model interrupted mid-training is
retrained from scratch (the HF checkpoints hold no optimizer state, and the
toy models train in a minute, so restoring Adam moments is not worth a second
checkpoint format).
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from trajax import atomic, checkpoints
from trajax import data as data_lib
from trajax import trajectory
from trajax.models import opt
from trajax.toy import documents, export, tasks
from trajax.toy import tokenizer as tokenizer_lib
from trajax.toy import world as world_lib

BOS_ID = tokenizer_lib.SPECIAL_TOKENS.index("</s>")  # OPT prepends </s> (id 2) as BOS
PAD_ID = tokenizer_lib.SPECIAL_TOKENS.index("<pad>")

# ------------------------------------------------------------------ schedule


def checkpoint_steps(total_steps: int, n: int, first_fraction: float = 0.02) -> list[int]:
  """`n` increasing steps ending at `total_steps`, dense early and sparse late.

  Geometric spacing from `first_fraction * total_steps` to `total_steps`, as
  OPT's released checkpoints (every 4K steps early, 20K late); where rounding
  would repeat a step, the next integer is taken, so early steps are at least
  one apart.

  Args:
    total_steps: the final training step (the last checkpoint).
    n: number of checkpoints (1 <= n <= total_steps).
    first_fraction: where the first checkpoint falls, as a fraction of training.
  Returns:
    A list of n strictly increasing ints, the last being total_steps.
  """
  if not 1 <= n <= total_steps:
    raise ValueError(f"checkpoint_steps: need 1 <= n <= total_steps, got n={n}, "
                     f"total_steps={total_steps}")
  first = max(1.0, first_fraction * total_steps)
  raw = np.geomspace(first, total_steps, n) if n > 1 else np.array([total_steps])
  steps = []
  for s in np.round(raw).astype(int):
    steps.append(max(int(s), steps[-1] + 1 if steps else 1))
  # Pushing duplicates up may overshoot at the end: pull back from total_steps.
  steps[-1] = total_steps
  for i in range(n - 2, -1, -1):
    steps[i] = min(steps[i], steps[i + 1] - 1)
  return steps


# ---------------------------------------------------------------------- data


def _write_jsonl(texts: list[str], path: str) -> None:
  with atomic.atomic_open(path, "w") as f:
    for text in texts:
      f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def chunk_documents(docs_ids: list[list[int]], seq_len: int, min_chunk: int = 2):
  """[BOS] + each document's ids, cut into rows of `seq_len`, the last right-padded.

  Args:
    docs_ids: token ids per document (no special tokens).
    seq_len: tokens per training row.
    min_chunk: a document's last piece shorter than this is dropped.
  Returns:
    (tokens [rows, seq_len] int32, mask [rows, seq_len] bool).
  """
  rows = []
  for ids in docs_ids:
    ids = [BOS_ID] + list(ids)
    for start in range(0, len(ids), seq_len):
      piece = ids[start:start + seq_len]
      if len(piece) >= min_chunk:
        rows.append(piece)
  tokens = np.full((len(rows), seq_len), PAD_ID, np.int32)
  mask = np.zeros((len(rows), seq_len), bool)
  for i, piece in enumerate(rows):
    tokens[i, :len(piece)] = piece
    mask[i, :len(piece)] = True
  return tokens, mask


def batch_order(n_rows: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """Row indices [steps, batch_size]: a fresh seeded permutation per epoch."""
  need = steps * batch_size
  perms = []
  for epoch in range(math.ceil(need / n_rows)):
    perms.append(np.random.default_rng([seed, epoch]).permutation(n_rows))
  return np.concatenate(perms)[:need].reshape(steps, batch_size)


def prepare_data(config, workdir: str) -> dict[str, Any]:
  """World, documents, tokenizer, tasks and token rows for training.

  The tokenizer is trained once; a rerun reuses `{workdir}/tokenizer` so that
  reused checkpoints and new ones share it.
  """
  w = config.world
  world = world_lib.make_world(w.seed, n_people=w.n_people, n_towns=w.n_towns)
  splits = documents.generate_splits(world, w.n_train_docs, w.n_validation_docs, w.seed,
                                     min_tokens=w.doc_tokens, n_analysis=w.n_analysis_docs,
                                     n_corrupted=w.get("n_corrupted_docs", 0))
  data_dir = os.path.join(workdir, "data")
  os.makedirs(data_dir, exist_ok=True)
  for split, texts in splits.items():
    _write_jsonl(texts, os.path.join(data_dir, f"{split}.jsonl"))
  for task in tasks.multiple_choice_tasks(world, w.n_task_examples, w.seed):
    tasks.write_bigbench_task(task, os.path.join(workdir, "tasks"))

  tok_dir = os.path.join(workdir, "tokenizer")
  if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
    tmp = atomic.temporary_name(tok_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer_lib.train_tokenizer(splits["train"], w.vocab_size, tmp)
    shutil.rmtree(tok_dir, ignore_errors=True)
    os.replace(tmp, tok_dir)
  else:
    logging.info("reusing the tokenizer in %s", tok_dir)
  tokenizer = checkpoints.load_tokenizer(tok_dir)

  seq_len = config.train.seq_len
  ids = tokenizer(splits["train"], add_special_tokens=False)["input_ids"]
  train_tokens, train_mask = chunk_documents(ids, seq_len)
  val_docs = [data_lib.Document(f"validation:{i}", t) for i, t in enumerate(splits["validation"])]
  # Validation loss during training; the scoring stage measures valid PPL on the same
  # blocks ([BOS] + a document's start) and analyses the separate "analysis" split.
  val = data_lib.make_blocks(val_docs, tokenizer, block_len=seq_len, max_docs=None, bos_id=BOS_ID,
                             pad_id=PAD_ID)
  return {
      "tokenizer_dir": tok_dir, "vocab_size": len(tokenizer), "train_tokens": train_tokens,
      "train_mask": train_mask, "val_tokens": val.tokens, "val_mask": val.mask
  }


# --------------------------------------------------------------------- model


def model_config(spec, vocab_size: int, seq_len: int) -> opt.OPTConfig:
  """A pre-LN OPT (tied head, ReLU, learned positions) from a config `models` entry."""
  return opt.OPTConfig(vocab_size=vocab_size, hidden_size=spec["hidden"],
                       num_hidden_layers=spec["layers"], ffn_dim=spec["ffn"],
                       num_attention_heads=spec["heads"], max_position_embeddings=seq_len,
                       word_embed_proj_dim=spec["hidden"], pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                       eos_token_id=BOS_ID)


def param_count(model) -> int:
  """Parameters of the model (the tied head counted once, as HF counts it)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _decay_mask(params):
  # Weight decay on matrices (kernels, embeddings), not on biases or LayerNorm.
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(k, "key", None) in ("kernel", "embedding") for k in path), params)


@functools.lru_cache(maxsize=None)
def _optimizer(lr, steps, warmup_steps, min_lr_ratio, b1, b2, weight_decay, grad_clip):
  schedule = optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=lr,
                                                warmup_steps=warmup_steps, decay_steps=steps,
                                                end_value=lr * min_lr_ratio)
  return optax.chain(
      optax.clip_by_global_norm(grad_clip),
      optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask))


def make_optimizer(t, lr: float) -> optax.GradientTransformation:
  """AdamW with linear warmup, cosine decay to `lr * min_lr_ratio`, global-norm clipping.

  The same hyperparameters give the same (cached) object, so a retrained model
  of the same architecture reuses the compiled train step.
  """
  return _optimizer(float(lr), int(t.steps), int(t.warmup_steps), float(t.min_lr_ratio),
                    float(t.b1), float(t.b2), float(t.weight_decay), float(t.grad_clip))


def _mean_nll(graphdef, params, tokens_bt, mask_bt):
  """(sum of next-token NLL over real targets, their count), float32."""
  logits = nnx.merge(graphdef, params)(tokens_bt, mask_bt)[:, :-1]
  valid = (mask_bt[:, 1:] & mask_bt[:, :-1]).astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_bt[:, 1:])
  return jnp.sum(nll * valid), jnp.sum(valid)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def train_step(graphdef, tx, params, opt_state, tokens_bt, mask_bt):
  """One AdamW step on the mean cross-entropy of real target tokens (float32 logits).

  Args:
    graphdef: the model's `nnx.split` graph (static: one compile per architecture).
    tx: the optimizer from `make_optimizer` (static).
    params, opt_state: donated; [batch, length] tokens and bool mask.
  Returns:
    (params, opt_state, loss, gradient global norm before clipping).
  """
  def loss_fn(p):
    total, count = _mean_nll(graphdef, p, tokens_bt, mask_bt)
    return total / jnp.maximum(count, 1.0)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)


@functools.partial(jax.jit, static_argnums=0)
def _eval_batch(graphdef, params, tokens_bt, mask_bt):
  return _mean_nll(graphdef, params, tokens_bt, mask_bt)


def validation_loss(graphdef, params, tokens, mask, batch_size: int) -> float:
  """Mean next-token NLL (nats) over every real target of the validation blocks."""
  total = count = 0.0
  for start in range(0, tokens.shape[0], batch_size):
    tok, msk = tokens[start:start + batch_size], mask[start:start + batch_size]
    pad = batch_size - tok.shape[0]  # fixed batch shape: one compile
    tok = np.pad(tok, ((0, pad), (0, 0)), constant_values=PAD_ID)
    msk = np.pad(msk, ((0, pad), (0, 0)))
    s, c = _eval_batch(graphdef, params, jnp.asarray(tok), jnp.asarray(msk))
    total += float(s)
    count += float(c)
  return total / max(count, 1.0)


# ------------------------------------------------------------------ training


def _fingerprint(config, spec, data) -> dict:
  """What a reused checkpoint must have been trained with."""
  t = {k: v for k, v in config.train.to_dict().items() if k != "models"}
  return {
      "model": dict(spec), "train": t, "world": config.world.to_dict(),
      "vocab_size": data["vocab_size"]
  }


def _ckpt_dir(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, f"step{step}")


def _reusable(model_dir: str, steps: list[int], fingerprint: dict) -> bool:
  if not all(os.path.isdir(_ckpt_dir(model_dir, s)) for s in steps):
    return False
  try:
    with open(os.path.join(model_dir, "train_config.json")) as f:
      return json.load(f) == json.loads(json.dumps(fingerprint))
  except (OSError, json.JSONDecodeError):
    return False


def train_model(spec, config, data, model_dir: str) -> trajectory.Model:
  """Trains one model from scratch, exporting every scheduled checkpoint.

  Args:
    spec: one entry of `config.train.models` (name, hidden, layers, heads, ffn, lr).
    config: the toy config.
    data: from `prepare_data`.
    model_dir: `{workdir}/checkpoints/{name}`.
  Returns:
    The model's manifest entry.
  """
  t = config.train
  steps = checkpoint_steps(t.steps, t.checkpoints, t.first_checkpoint_fraction)
  fingerprint = _fingerprint(config, spec, data)
  cfg = model_config(spec, data["vocab_size"], t.seq_len)
  name = spec["name"]
  model = opt.create(cfg, seed=t.init_seed)
  n_params = param_count(model)
  tokens_per_step = t.batch_size * t.seq_len
  manifest_entry = trajectory.Model(
      name, tokens_per_step,
      tuple(trajectory.Checkpoint(s, _ckpt_dir(model_dir, s)) for s in steps), n_params)

  if _reusable(model_dir, steps, fingerprint):
    logging.info("%s: all %d checkpoints exist (final: step %d); reusing, not retraining", name,
                 len(steps), steps[-1])
    return manifest_entry
  if os.path.isdir(model_dir):
    logging.warning("%s: %s holds an incomplete or different run; retraining from scratch", name,
                    model_dir)
    shutil.rmtree(model_dir)
  os.makedirs(model_dir)
  atomic.write_json(os.path.join(model_dir, "train_config.json"), fingerprint, sort_keys=False)

  graphdef, params = nnx.split(model, nnx.Param)
  tx = make_optimizer(t, spec["lr"])
  opt_state = tx.init(params)
  order = batch_order(data["train_tokens"].shape[0], t.batch_size, t.steps, t.data_seed)
  tokens_nt = data["train_tokens"]
  mask_nt = data["train_mask"]
  logging.info("%s: %s params (hidden %d, layers %d), %d steps x %d tokens, checkpoints at %s",
               name, f"{n_params:,}", spec["hidden"], spec["layers"], t.steps, tokens_per_step,
               steps)

  log_path = os.path.join(model_dir, "train_log.jsonl")

  def log(record):
    with open(log_path, "a") as f:
      f.write(json.dumps(record) + "\n")

  pending = set(steps)
  losses = []
  start = interval_start = time.perf_counter()
  interval_tokens = 0
  for step in range(1, t.steps + 1):
    rows = order[step - 1]
    params, opt_state, loss, gnorm = train_step(graphdef, tx, params, opt_state,
                                                jnp.asarray(tokens_nt[rows]),
                                                jnp.asarray(mask_nt[rows]))
    losses.append(loss)
    if step == 1:
      jax.block_until_ready(loss)
      first_step_end = time.perf_counter()
      logging.info("%s: first step (compilation) took %.1fs", name, first_step_end - start)
    interval_tokens += int(mask_nt[rows].sum())
    if step == 1 or step % t.log_every == 0 or step == t.steps:
      mean_loss = float(np.mean(jax.device_get(losses)))
      now = time.perf_counter()
      tok_s = interval_tokens / max(now - interval_start, 1e-9)
      # Steady-state rate (compilation excluded), exports and evaluations included.
      eta = (now - first_step_end) / max(step - 1, 1) * (t.steps - step)
      logging.info("%s step %d/%d: loss %.4f, grad norm %.3f, %.0f tokens/s, ETA %.0fs", name, step,
                   t.steps, mean_loss, float(gnorm), tok_s, eta)
      log({
          "step": step, "loss": mean_loss, "grad_norm": float(gnorm), "tokens_per_s": tok_s,
          "elapsed_s": now - start, "eta_s": eta
      })
      losses, interval_tokens, interval_start = [], 0, time.perf_counter()
    if step in pending:
      val = validation_loss(graphdef, params, data["val_tokens"], data["val_mask"], t.batch_size)
      path = export.save_hf_checkpoint(nnx.merge(graphdef, params), _ckpt_dir(model_dir, step),
                                       data["tokenizer_dir"])
      logging.info("%s step %d: validation loss %.4f; checkpoint %s", name, step, val, path)
      log({"step": step, "checkpoint": os.path.basename(path), "val_loss": val})
      pending.discard(step)
      # Start a new tokens/s interval: evaluation and export are not training throughput.
      interval_tokens, interval_start = 0, time.perf_counter()
  log({"done": True, "train_s": time.perf_counter() - start, "params": n_params})
  return manifest_entry


def train_family(config, workdir: str) -> str:
  """Trains (or reuses) every model of `config.train.models`; writes the manifest.

  Args:
    config: the toy config (`configs/toy.py`).
    workdir: output directory (see module docstring).
  Returns:
    Path of `{workdir}/trajectory.json`.
  """
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  data = prepare_data(config, workdir)
  logging.info("data: %d training rows of %d tokens, %d validation blocks, vocab %d (%.1fs)",
               data["train_tokens"].shape[0], config.train.seq_len, data["val_tokens"].shape[0],
               data["vocab_size"],
               time.perf_counter() - t0)
  entries = []
  for spec in config.train.models:
    entries.append(
        train_model(spec, config, data, os.path.join(workdir, "checkpoints", spec["name"])))
  path = os.path.join(workdir, "trajectory.json")
  trajectory.Trajectory(tuple(entries), name=config.get("name", "toy")).save(path)
  logging.info("trajectory of %d models written to %s (%.1fs)", len(entries), path,
               time.perf_counter() - t0)
  return path
