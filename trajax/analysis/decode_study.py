"""The sequence-level stage (paper §4): what `launch/decode.py` runs.

`run(config, workdir)` writes to `{workdir}/decode`:
  generations_{N}.jsonl    texts decoded by the small and large final checkpoints
  examples_{N}.md          Table 1
  generated_ppl_{N}.csv    PPL of the texts under every checkpoint (saved per checkpoint)
  corrupted_ppl.csv        PPL of corrupted documents under the final checkpoints (a corpus
                           apart from the prompts': `corrupted_documents`)
  mauve_{N}.csv, fig13_mauve_{N}.png   MAUVE of each (config, method) against the
                           documents' own continuations (`config.mauve`; App. C.3, C.4)
  cross_family_ppl_{N}.csv, fig7_cross_family_{N}.png   the texts scored by another
                           family's final checkpoints (`config.cross_family_trajectory`, Fig. 7)
  fig5_corrupted.png, fig6_final_{N}.png, fig6_flops_{method}_{N}.png and, when
  `config.store_dir` (default: `workdir`) holds a store, fig16_valid_ppl_{method}_{N}.png.
Each step is skipped when its output exists, so a rerun resumes.

Models are ordered by size, never by the manifest: sizes and FLOPs are the
store's records (`common.ModelInfo.from_store`) when the store scored the same
checkpoints, else they come from the final checkpoint's config.json (no weights).
Every checkpoint is read through one `trajax.stream.CheckpointStream` (HF or
converted directories, prefetch, `config.mesh_shape`).

In a multi-process run every process reads the same outputs-so-far (the
workdir is on a shared filesystem, as for the sweep) and computes; process 0
alone claims the workdir and writes.
"""
from __future__ import annotations

import os

import jax
from absl import logging
from jax.experimental import multihost_utils

from trajax import atomic, checkpoints, corruption, data, distributed, store, stream, trajectory
from trajax import workdir as workdir_lib
from trajax.analysis import common, cross_family, generation, generation_quality
from trajax.analysis import generation_figures as figures

GENERATION_FIELDS = ("config", "method", "seed", "prompt_ids", "generated_ids")


def _sync(name: str) -> None:
  """All processes reach this point before any goes on (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def model_infos(traj: trajectory.Trajectory, store_dir: str | None,
                seq_len: int = 0) -> list[common.ModelInfo]:
  """Sizes and FLOPs per step of every model of `traj`, smallest first.

  Args:
    traj: the manifest.
    store_dir: workdir of a result store (None: none); a model it recorded with the
      same checkpoints (steps, tokens per step) takes the store's sizes and FLOPs.
    seq_len: T of the PaLM FLOPs formula for the other models (0: their context).
  Returns:
    `common.ModelInfo` per model, by size (`common.by_size`).
  """
  try:
    reader = None if store_dir is None else store.open(store_dir)
  except FileNotFoundError:
    reader = None
  infos = []
  for m in traj.models:
    info = None
    if reader is not None and m.name in reader.models:
      try:
        info = common.ModelInfo.from_store(reader, m.name)
      except (KeyError, ValueError) as e:  # sizes not recorded (an older store)
        logging.info("model %s: %s; sizes from its checkpoint's config.json", m.name, e)
      if info is not None and (list(info.steps) != m.steps or
                               info.tokens_per_step != m.tokens_per_step):
        logging.info(
            "model %s: the store under %s scored other checkpoints; sizes from its "
            "checkpoint's config.json", m.name, store_dir)
        info = None
    if info is None:
      _, cfg = checkpoints.model_config(m.checkpoints[-1].path)
      info = common.ModelInfo.from_config(m, cfg, seq_len)
    infos.append(info)
  return common.by_size(infos)


def run(config, workdir: str) -> dict:
  """Generates with the small and large final checkpoints, scores, plots (paper §4).

  Args:
    config: `configs/decode.py`.
    workdir: outputs go to `{workdir}/decode` (see the module doc).
  Returns:
    {name: path} of everything written.
  """
  out_dir = os.path.join(workdir, "decode")
  if not distributed.is_writer():
    return _run(config, workdir, out_dir)
  with workdir_lib.claim(out_dir):
    return _run(config, workdir, out_dir)


def _read_generations(path: str, config) -> list[dict] | None:
  """The texts of an earlier run (None if there are none); other settings are an error."""
  if not os.path.exists(path):
    return None
  texts = common.read_jsonl(path, fields=GENERATION_FIELDS)
  have = {(t["config"], t["method"], t["seed"]) for t in texts}
  want = {(c, m, config.seed) for c in config.configs for m in config.methods}
  if have != want:
    raise ValueError(f"{path}: holds (config, method, seed) {sorted(have)} but the config "
                     f"asks for {sorted(want)}; use another workdir or delete the file")
  logging.info("reusing %d generated texts from %s", len(texts), path)
  return texts


def _generate(config, prompts, tokenizer, small_m, large_m, checkpoint_stream) -> list[dict]:
  """Decodes every prompt with the two final checkpoints."""
  if jax.process_count() > 1 and checkpoint_stream.mesh is not None:
    # `decoding.generate` takes host prompts and returns host arrays, so it cannot run on
    # weights sharded across processes: each process decodes the same texts on its own
    # first device instead (the weights must fit there).
    logging.info("multi-process run: each process decodes on one device, weights unsharded")
  checkpoint_stream = _single_device_stream(checkpoint_stream)
  models = {}
  items = [("small", small_m.checkpoints[-1].path), ("large", large_m.checkpoints[-1].path)]
  for loaded in checkpoint_stream.iterate(items):
    if loaded.error is not None:
      raise loaded.error
    models[loaded.key] = loaded.model
  vocab = len(tokenizer) if config.vocab_size < 0 else (config.vocab_size or None)
  logging.info("generating: small=%s large=%s, %d prompts, %d new tokens", small_m.name,
               large_m.name, len(prompts), config.max_new_tokens)
  return generation.generate_texts(models["small"], models["large"], prompts, tokenizer,
                                   configs=tuple(config.configs), methods=tuple(config.methods),
                                   max_new_tokens=config.max_new_tokens, top_p=config.top_p,
                                   temperature=config.temperature, seed=config.seed,
                                   batch_size=config.batch_size, eos_id=config.eos_id,
                                   vocab_size=vocab, log=logging.info)


def corrupted_documents(config, docs, prompts) -> list[data.Document]:
  """The corpus the corrupted-text experiment corrupts, apart from the prompt documents.

  `config.corrupted.data.files` when set (the paper: OPT's opensubtitles validation
  subset); else the documents of `config.data.files` after the prompts' own
  (`generation.held_out_documents`).
  """
  c = config.corrupted.data
  if c.files:
    out = data.read_documents(c.files, text_key=c.text_key, gutenberg=c.gutenberg, log=logging.info)
    shared = {p["doc"] for p in prompts} & {d.name for d in out}
    if shared:
      logging.warning("config.corrupted.data.files shares %d document(s) with the prompts",
                      len(shared))
    return out
  out = generation.held_out_documents(docs, prompts)
  if not out:
    raise ValueError(
        f"config.corrupted.data.files is empty and no document of config.data.files follows "
        f"the {len(prompts)} prompt documents (config.data.max_docs={config.data.max_docs}): "
        f"nothing held out to corrupt; set config.corrupted.data.files (the paper: OPT's "
        f"opensubtitles validation subset), lower config.data.max_docs, or set "
        f"config.corrupted.enabled=False")
  logging.info("corrupted texts: %d document(s) held out after the prompts' own", len(out))
  return out


def _corrupted(config, docs, tokenizer, traj, order, checkpoint_stream) -> list[dict]:
  """Corrupted-document rows of every model's final checkpoint, in `order`."""
  seqs = generation.document_tokens(docs, tokenizer, config.corrupted.max_length,
                                    config.corrupted.max_docs or None)
  special = [
      i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                  tokenizer.unk_token_id) if i is not None
  ]
  finals = {name: traj.model(name).checkpoints[-1] for name in order}
  steps = {name: c.step for name, c in finals.items()}
  return generation.corrupted_rows(
      seqs, {name: c.path for name, c in finals.items()},
      vocab_ids=corruption.candidate_ids(len(tokenizer), exclude=special),
      fractions=tuple(config.corrupted.fractions), max_length=config.corrupted.max_length,
      seed=config.seed, bos_id=tokenizer.bos_token_id, steps=steps,
      checkpoint_stream=checkpoint_stream, batch_size=config.score_batch_size)


def _run(config, workdir: str, out_dir: str) -> dict:
  writer = distributed.is_writer()
  traj = trajectory.load(config.trajectory, allow_outside_root=config.allow_outside_root)
  store_dir = config.store_dir or workdir
  infos = model_infos(traj, store_dir, config.seq_len)
  order = [i.name for i in infos]
  small_m = traj.model(config.small_model or order[0])
  large_m = traj.model(config.large_model or order[-1])
  tokenizer = checkpoints.load_tokenizer(config.tokenizer or large_m.checkpoints[-1].path)
  mesh_shape = config.get("mesh_shape", "")
  checkpoint_stream = stream.CheckpointStream(config.dtype, mesh_shape)
  if config.score_batch_size % checkpoint_stream.data_parallel:
    raise ValueError(f"config.score_batch_size={config.score_batch_size} must be a multiple of "
                     f"the mesh's data axis ({checkpoint_stream.data_parallel}, config.mesh_shape="
                     f"{mesh_shape!r})")
  docs = data.read_documents(config.data.files, text_key=config.data.text_key,
                             gutenberg=config.data.gutenberg, log=logging.info)
  prompts = generation.make_prompts(docs, tokenizer, config.prompt_tokens, config.data.max_docs or
                                    None)
  n = config.max_new_tokens
  out = {
      "generations": os.path.join(out_dir, f"generations_{n}.jsonl"),
      "examples": os.path.join(out_dir, f"examples_{n}.md"),
      "generated_ppl": os.path.join(out_dir, f"generated_ppl_{n}.csv"),
  }
  corrupted_path = os.path.join(out_dir, "corrupted_ppl.csv")
  mauve_path = os.path.join(out_dir, f"mauve_{n}.csv")
  cross_path = os.path.join(out_dir, f"cross_family_ppl_{n}.csv")
  # What earlier runs left, read by every process before process 0 writes anything.
  texts = _read_generations(out["generations"], config)
  rows = generation.read_rows(out["generated_ppl"], generation.PPL_FIELDS)
  crows = (generation.read_rows(corrupted_path, generation.CORRUPT_FIELDS)
           if config.corrupted.enabled else [])
  mrows = common.read_csv(mauve_path, generation_quality.MAUVE_FIELDS,
                          parse=generation_quality.NUMBERS)
  xrows = generation.read_rows(cross_path, generation.PPL_FIELDS)
  _sync("decode: earlier outputs read")
  cdocs = (
      corrupted_documents(config, docs, prompts) if config.corrupted.enabled and not crows else None
  )  # fails before any decoding

  if texts is None:
    texts = _generate(config, prompts, tokenizer, small_m, large_m, checkpoint_stream)
    if writer:
      common.write_jsonl(texts, out["generations"])
  if writer:
    atomic.write_text(out["examples"], figures.example_table(texts, config.table_prompts))

  def save(new):
    rows.extend(new)
    if writer:
      common.write_csv(rows, out["generated_ppl"], generation.PPL_FIELDS)

  ckpts = {}
  for name in order:  # smallest model first
    m = traj.model(name)
    ckpts[name] = [(c.step, c.path)
                   for c in (m.checkpoints if config.score_all_checkpoints else m.checkpoints[-1:])]
  done = {(r["model"], r["step"]) for r in rows}
  generation.score_texts(texts, ckpts, checkpoint_stream=checkpoint_stream,
                         batch_size=config.score_batch_size, done=done, on_rows=save,
                         log=logging.info)
  if writer:
    common.write_csv(rows, out["generated_ppl"], generation.PPL_FIELDS)

  if config.corrupted.enabled:
    if not crows:
      crows = _corrupted(config, cdocs, tokenizer, traj, order, checkpoint_stream)
      if writer:
        common.write_csv(crows, corrupted_path, generation.CORRUPT_FIELDS)
    out["corrupted_ppl"] = corrupted_path
  if config.mauve.enabled:
    if {(r["config"], r["method"]) for r in mrows} != {(t["config"], t["method"]) for t in texts}:
      mrows = _mauve(config, docs, texts, tokenizer, large_m, checkpoint_stream)
      if writer:
        common.write_csv(mrows, mauve_path, generation_quality.MAUVE_FIELDS)
    out["mauve"] = mauve_path
  xinfos = []
  if config.cross_family_trajectory:
    xinfos = _cross_family(config, texts, tokenizer, xrows, cross_path, checkpoint_stream, writer)
    out["cross_family_ppl"] = cross_path
  out.update(_figures(out_dir, n, rows, crows, infos, common.valid_ppl(store_dir), writer))
  if mrows and config.mauve.enabled:
    out["fig13"] = os.path.join(out_dir, f"fig13_mauve_{n}.png")
    if writer:
      figures.plot_mauve(out["fig13"], mrows)
  if xinfos:
    out["fig7"] = os.path.join(out_dir, f"fig7_cross_family_{n}.png")
    if writer:
      figures.plot_generated_scaling(out["fig7"], xrows, {i.name: i.param_count for i in xinfos},
                                     title="scored by {}".format(", ".join(i.name for i in xinfos)))
  _sync("decode: done")
  return out


def _single_device_stream(checkpoint_stream):
  """The stream itself, or (multi-process on a mesh) a plain one: host-array work runs per process."""
  if jax.process_count() > 1 and checkpoint_stream.mesh is not None:
    return stream.CheckpointStream(checkpoint_stream.dtype_name)
  return checkpoint_stream


def _mauve(config, docs, texts, tokenizer, large_m, checkpoint_stream) -> list[dict]:
  """Fig. 13 / Table 4: MAUVE of each (config, method) against the documents' continuations."""
  mc = config.mauve
  path = mc.feature_model or large_m.checkpoints[-1].path
  human = generation_quality.human_texts(texts, docs, tokenizer, config.prompt_tokens,
                                         config.max_new_tokens)
  logging.info("MAUVE: %d human continuations, features of %s", len(human), path)
  model = _single_device_stream(checkpoint_stream).load(path)
  return generation_quality.mauve_rows(texts, human, model, num_buckets=mc.num_buckets,
                                       explained_variance=mc.explained_variance,
                                       num_redo=mc.num_redo, max_iter=mc.max_iter,
                                       scaling=mc.scaling, seed=mc.seed,
                                       batch_size=config.batch_size, log=logging.info)


def _cross_family(config, texts, tokenizer, xrows, path, checkpoint_stream, writer):
  """Fig. 7: the texts scored by another family's checkpoints; its models' infos, smallest first."""
  other = trajectory.load(config.cross_family_trajectory,
                          allow_outside_root=config.allow_outside_root)
  xinfos = model_infos(other, None, config.seq_len)
  order = [i.name for i in xinfos]
  other_tok = checkpoints.load_tokenizer(config.cross_family_tokenizer or
                                         other.model(order[-1]).checkpoints[-1].path)

  def save(new):
    xrows.extend(new)
    if writer:
      common.write_csv(xrows, path, generation.PPL_FIELDS)

  cross_family.score(texts, tokenizer, other, other_tok, order,
                     all_checkpoints=config.cross_family_all_checkpoints,
                     checkpoint_stream=checkpoint_stream, batch_size=config.score_batch_size,
                     done={(r["model"], r["step"]) for r in xrows}, on_rows=save, log=logging.info)
  if writer:
    common.write_csv(xrows, path, generation.PPL_FIELDS)
  return xinfos


def _figures(out_dir: str, n: int, rows, crows, infos, valid, draw: bool) -> dict:
  """Fig. 5 left, 6 and 16 (drawn by process 0 only); {name: png path}."""
  out = {}

  def plot(name, file, fn, *args, **kwargs):
    out[name] = os.path.join(out_dir, file)
    if draw:
      fn(out[name], *args, **kwargs)

  params = {i.name: i.param_count for i in infos}
  if crows:
    plot("fig5", "fig5_corrupted.png", figures.plot_corrupted, crows, params)
  plot("fig6_final", f"fig6_final_{n}.png", figures.plot_generated_scaling, rows, params)
  flops_by = {i.name: i.flops_at("palm") for i in infos}
  valid = {i.name: valid[i.name] for i in infos if i.name in (valid or {})}
  for method in sorted({r["method"] for r in rows}):
    plot(f"fig6_flops_{method}", f"fig6_flops_{method}_{n}.png", figures.plot_generated_trajectory,
         rows, flops_by, method)
    if valid:
      plot(f"fig16_{method}", f"fig16_valid_ppl_{method}_{n}.png",
           figures.plot_generated_trajectory, rows, valid, method, xlabel="validation perplexity",
           logx=True)
  return out
