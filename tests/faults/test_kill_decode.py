"""SIGKILL the decoding stage (paper §4) at seeded random moments; the rerun equals a clean run.

The stage writes generations_{N}.jsonl, then generated_ppl_{N}.csv once per
checkpoint, then corrupted_ppl.csv, figures and an example table; every file
is replaced atomically. Kills land (at seeded points a traced clean run
reached) inside the atomic write of every kind of output; the resumed workdir
holds the clean run's files byte for byte and no temporary file.
"""
import sys

from conftest import OPT_TOKENIZER, ROOT, write_manifest
import killpoints

SEED = 20261124
NEW_TOKENS = 12


def _cmd(tmp_path, tiny_ckpt):
  models = {}
  for name, hidden in (("s", 16), ("l", 32)):
    ckpts = []
    for k in range(3):
      path, _ = tiny_ckpt(f"{name}/step{k + 1}", seed=10 * hidden + k, vocab_size=50272,
                          hidden_size=hidden, num_hidden_layers=2, ffn_dim=2 * hidden,
                          num_attention_heads=2, max_position_embeddings=128)
      ckpts.append(((k + 1) * 10, path))
    models[name] = (100, ckpts)
  manifest = write_manifest(str(tmp_path / "traj.json"), models)
  docs = tmp_path / "docs"
  docs.mkdir()
  for i in range(6):
    (docs / f"{i}.txt").write_text(f"Document {i} tells of the river. " * 12)
  return [
      sys.executable,
      str(ROOT / "launch" / "decode.py"), f"--config={ROOT}/configs/decode.py",
      f"--config.trajectory={manifest}", f"--config.tokenizer={OPT_TOKENIZER}",
      f"--config.data.files={docs / '*.txt'}", "--config.data.max_docs=3",
      f"--config.max_new_tokens={NEW_TOKENS}", "--config.batch_size=4",
      "--config.score_batch_size=4", "--config.corrupted.max_length=24",
      "--config.corrupted.fractions=(0.2, 1.0)"
  ]


def test_sigkill_during_decoding_then_resume_equals_clean_run(tmp_path, tiny_ckpt):
  cmd = _cmd(tmp_path, tiny_ckpt)
  # Inside the writes of the generations (JSONL), the per-checkpoint PPL (CSV), the
  # corrupted-text PPL, the example table and a figure.
  killpoints.kill_and_compare(
      lambda workdir: cmd + [f"--workdir={workdir}"], tmp_path / "clean", tmp_path / "killed",
      seed=SEED, required=("atomic:*/generations_*.jsonl", "atomic:*/generated_ppl_*.csv",
                           "atomic:*/corrupted_ppl.csv", "atomic:*/examples_*.md", "atomic:*.png"))
