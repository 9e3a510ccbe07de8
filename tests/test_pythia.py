"""The Pythia preset: revision list, and a manifest built from a fake Hugging Face cache."""
import hashlib
import logging
import os
import shutil

import numpy as np
import pytest
import torch

import trajax
from trajax import models
from trajax import pythia
from trajax import trajectory
from trajax.models import gpt_neox


def test_family_is_registered():
  assert models.FAMILIES["gpt_neox"] is gpt_neox


def test_revisions():
  revs = pythia.pythia_revisions()
  assert len(revs) == len(set(revs)) == 154
  assert revs[:12] == [
      "step0", "step1", "step2", "step4", "step8", "step16", "step32", "step64", "step128",
      "step256", "step512", "step1000"
  ]
  assert revs[-2:] == ["step142000", "step143000"]
  steps = [pythia.revision_step(r) for r in revs]
  assert steps == sorted(steps) and np.all(np.diff(steps[11:]) == 1000)
  with pytest.raises(ValueError, match="not a Pythia step"):
    pythia.revision_step("main")


def _tiny_neox(seed):
  from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
  torch.manual_seed(seed)
  return GPTNeoXForCausalLM(
      GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=32, rotary_pct=0.25)).eval()


def _add_revision(repo, revision, saved_dir, commit):
  """As huggingface_hub lays it out: blobs named by sha256, snapshot links, a ref file."""
  snap = os.path.join(repo, "snapshots", commit)
  os.makedirs(snap, exist_ok=True)
  os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
  for name in os.listdir(saved_dir):
    with open(os.path.join(saved_dir, name), "rb") as f:
      data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    blob = os.path.join(repo, "blobs", digest)
    if not os.path.exists(blob):
      shutil.copyfile(os.path.join(saved_dir, name), blob)
    os.symlink(os.path.join("..", "..", "blobs", digest), os.path.join(snap, name))
  write_ref(repo, revision, commit)


def write_ref(repo, revision, commit):
  os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
  with open(os.path.join(repo, "refs", revision), "w") as f:
    f.write(commit)


@pytest.fixture(scope="module")
def fake_cache(tmp_path_factory):
  """pythia-tiny at step0 and step1 (identical weights), step2, step1000; step4 absent;
  step8's ref names a snapshot that is not there."""
  tmp = tmp_path_factory.mktemp("pythia")
  refs = {}
  for seed in range(3):
    refs[seed] = _tiny_neox(seed)
    refs[seed].save_pretrained(tmp / f"saved{seed}")
  repo = pythia.repo_dir(str(tmp / "hub"), "pythia-tiny")
  for i, (rev, seed) in enumerate([("step0", 0), ("step1", 0), ("step2", 1), ("step1000", 2)]):
    _add_revision(repo, rev, str(tmp / f"saved{seed}"), f"{i:040x}")
  write_ref(repo, "step8", "f" * 40)
  return str(tmp / "hub"), refs


REVISIONS = ["step0", "step1", "step2", "step4", "step8", "step1000"]


def test_manifest_from_cache(fake_cache, tmp_path, caplog):
  cache, refs = fake_cache
  out = str(tmp_path / "pythia.json")
  with caplog.at_level(logging.WARNING):
    report = pythia.build_manifest(cache, ["EleutherAI/pythia-tiny"], out, revisions=REVISIONS)
  # Identical weights: warned and reported.
  assert report.duplicates == {"pythia-tiny": [["step0", "step1"]]}
  assert any("step0, step1 carry identical weights" in r.getMessage() for r in caplog.records)
  # Missing: no ref; a ref to an absent snapshot.
  assert sorted(report.missing["pythia-tiny"]) == ["step4", "step8"]
  assert "refs/step4" in report.missing["pythia-tiny"]["step4"]
  assert "does not exist" in report.missing["pythia-tiny"]["step8"]
  assert any("2 of 6 revisions missing" in r.getMessage() for r in caplog.records)
  # The manifest loads with the generic reader (paths inside its root, the cache).
  traj = trajectory.load(out)
  (m,) = traj.models
  assert m.name == "pythia-tiny" and m.steps == [0, 1, 2, 1000]
  assert m.tokens_per_step == 2_097_152
  assert m.params == sum(p.numel() for p in refs[0].parameters())
  assert traj.problems() == []
  # A checkpoint read through the snapshot links scores as transformers does.
  model = trajax.load_hf(m.checkpoints[2].path)
  ids = np.random.RandomState(0).randint(0, 64, size=(1, 10))
  with torch.no_grad():
    want = refs[1](input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(ids)), want, atol=1e-4)


def test_hashes_read_or_trusted_agree(fake_cache, tmp_path):
  cache, _ = fake_cache
  out = str(tmp_path / "m.json")
  trusted = pythia.build_manifest(cache, ["pythia-tiny"], out, revisions=REVISIONS).hashes
  read = pythia.build_manifest(cache, ["pythia-tiny"], out, revisions=REVISIONS,
                               trust_blob_names=False).hashes
  assert trusted == read and len(set(read["pythia-tiny"].values())) == 3
  snap = trajectory.load(out).models[0].checkpoints[0].path
  with open(os.path.join(snap, "model.safetensors"), "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert pythia.file_sha256(os.path.join(snap, "model.safetensors")) == digest


def test_default_revisions_and_absent_models(fake_cache, tmp_path):
  cache, _ = fake_cache
  out = str(tmp_path / "m.json")
  report = pythia.build_manifest(cache, ["pythia-tiny", "pythia-absent"], out, hash_weights=False)
  assert len(report.missing["pythia-tiny"]) == 154 - 4
  assert len(report.missing["pythia-absent"]) == 154
  assert [m.name for m in trajectory.load(out).models] == ["pythia-tiny"]
  with pytest.raises(ValueError, match="none of"):
    pythia.build_manifest(cache, ["pythia-absent"], out)
