"""The store's validation dataset: scored in the same sweep, valid PPL measured on it."""
import json
import os

import numpy as np
import pytest

from trajax import store, sweep
from conftest import OPT_TOKENIZER, torch_logprobs, write_manifest

MODEL = dict(vocab_size=50272, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
             num_attention_heads=2, max_position_embeddings=64)
STEPS = (10, 20)


def _config(tmp_path, tiny_ckpt, with_validation=True):
  """One model x 2 checkpoints; analysis docs and two validation subsets (books, talk)."""
  refs, ckpts = {}, []
  for k, step in enumerate(STEPS):
    path, refs[step] = tiny_ckpt(f"m/step{step}", seed=7 + k, **MODEL)
    ckpts.append((step, path))
  root = tmp_path / "docs"
  for sub, texts in {
      "analysis": ["The river runs past the old mill. " * 4, "A quiet town by the sea."],
      "books": ["Call me Ishmael. Some years ago I went to sea. " * 3, "Chapter one. It began."],
      "talk": ["- Where are you going?\n- Home.\n" * 3],
  }.items():
    (root / sub).mkdir(parents=True)
    for i, t in enumerate(texts):
      (root / sub / f"{i}.txt").write_text(t)
  from configs import score as score_config
  config = score_config.get_config()
  config.trajectory = write_manifest(str(tmp_path / "trajectory.json"), {"m": (100, ckpts)})
  config.tokenizer = str(OPT_TOKENIZER)
  config.data.files = str(root / "analysis" / "*.txt")
  config.data.block_len = 24
  config.batch_size = 2
  if with_validation:
    config.validation.files = f"books={root / 'books' / '*.txt'},talk={root / 'talk' / '*.txt'}"
    config.validation.block_len = 16
  return config, refs


def _hand_ppl(refs, tokens, mask):
  """exp(mean NLL) per checkpoint from transformers' own log-probs."""
  out = []
  for step in STEPS:
    lp = torch_logprobs(refs[step], tokens, mask)
    out.append(np.exp(-np.nanmean(lp)))
  return np.array(out)


def test_valid_ppl_is_measured_on_the_validation_subsets(tmp_path, tiny_ckpt):
  config, refs = _config(tmp_path, tiny_ckpt)
  reader = sweep.run(config, str(tmp_path / "out"))
  assert reader.datasets == ["analysis", "validation"]
  assert reader.valid_ppl_source == "validation"
  assert reader.validation_subsets == ["books", "talk"]
  vroot = os.path.join(reader.root, "validation")
  with np.load(os.path.join(vroot, "tokens.npz")) as blocks:
    tokens, mask = blocks["tokens"], blocks["mask"]
  subsets = json.load(open(os.path.join(vroot, "dataset.json")))["subsets"]
  assert subsets == {"books": [0, 2], "talk": [2, 3]} and tokens.shape == (3, 16)
  # Aggregated over every validation token, and per subset, against torch by hand.
  np.testing.assert_allclose(reader.valid_ppl("m"), _hand_ppl(refs, tokens, mask), rtol=1e-5)
  for name, (lo, hi) in subsets.items():
    np.testing.assert_allclose(reader.valid_ppl("m", subset=name),
                               _hand_ppl(refs, tokens[lo:hi], mask[lo:hi]), rtol=1e-5)
  # The analysed tokens give a different number: valid PPL is not computed on them.
  analysis_ppl = _hand_ppl(refs, reader.tokens, reader.mask)
  assert not np.allclose(analysis_ppl, reader.valid_ppl("m"), rtol=1e-3)
  with pytest.raises(ValueError, match="no validation subset 'wiki'"):
    reader.valid_ppl("m", subset="wiki")


def test_validation_added_later_scores_only_its_rows(tmp_path, tiny_ckpt, monkeypatch):
  config, refs = _config(tmp_path, tiny_ckpt, with_validation=False)
  out = str(tmp_path / "out")
  before = sweep.run(config, out)
  assert before.valid_ppl_source == "analysis"  # the fallback, said so
  np.testing.assert_allclose(before.valid_ppl("m"), _hand_ppl(refs, before.tokens, before.mask),
                             rtol=1e-5)
  analysis_rows = before.logprobs("m").tobytes()
  written = []
  real_write = store.ModelRows.write

  def write(self, index, row):
    written.append((self.name, index))
    real_write(self, index, row)

  monkeypatch.setattr(store.ModelRows, "write", write)
  with_val, _ = _config(tmp_path / "again", tiny_ckpt)
  config.validation = with_val.validation
  after = sweep.run(config, out)
  assert sorted(written) == [("validation/m", 0), ("validation/m", 1)]
  assert after.logprobs("m").tobytes() == analysis_rows
  assert after.valid_ppl_source == "validation"
  assert np.isfinite(after.valid_ppl("m")).all()


def test_other_validation_data_on_reopen_is_refused(tmp_path, tiny_ckpt):
  config, _ = _config(tmp_path, tiny_ckpt)
  out = str(tmp_path / "out")
  sweep.run(config, out)
  config.validation.block_len = 12
  with pytest.raises(ValueError, match=r"validation/dataset.json: this store was written for"):
    sweep.run(config, out)


def test_parse_subsets(tmp_path):
  for name in ("wiki.jsonl", "books.jsonl"):
    (tmp_path / name).write_text('{"text": "x"}\n')
  assert sweep.parse_subsets(f"{tmp_path}/*.jsonl") == [("books", f"{tmp_path}/books.jsonl"),
                                                        ("wiki", f"{tmp_path}/wiki.jsonl")]
  assert sweep.parse_subsets(" a = x/*.txt , b=y.jsonl") == [("a", "x/*.txt"), ("b", "y.jsonl")]
  with pytest.raises(ValueError, match="given twice"):
    sweep.parse_subsets("a=x,a=y")
  with pytest.raises(ValueError, match="matches no file"):
    sweep.parse_subsets(f"{tmp_path}/none*.txt")
  with pytest.raises(ValueError, match="is not 'name=glob'"):
    sweep.parse_subsets("=x")
