"""The decoding stage (paper §4) end to end: models by size, converted manifests, a mesh.

One plain run over HF checkpoints is the reference for the others: the same
manifest converted to orbax, and the same run on a (2, 2, 2) mesh of 8 CPU
devices, must decode the same token ids and give the same perplexities (1e-5).
The plain run itself is checked against independent references: the large
model's own greedy decoding, torch's parameter count, per-text log-probs.
"""
import contextlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import trajax
from configs import decode as decode_config
from conftest import HANG_GUARD_S, OPT_TOKENIZER, ROOT, hf_opt, reserved_port, save_hf, write_manifest
from trajax import convert, decoding
from trajax.analysis import common, decode_study, generation

MODEL = dict(vocab_size=50272, num_hidden_layers=2, num_attention_heads=2,
             max_position_embeddings=64)
SIZES = {"l": 32, "s": 16}  # the manifest lists the large model first
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  """(config, the plain run's outputs, the torch models by (name, step))."""
  root = tmp_path_factory.mktemp("decode")
  models, refs = {}, {}
  for name, hidden in SIZES.items():
    ckpts = []
    for k, step in enumerate((10, 30)):
      ref = hf_opt(10 * hidden + k, hidden_size=hidden, ffn_dim=2 * hidden, **MODEL)
      ckpts.append((step, save_hf(ref, root / name / f"step{step}")))
      refs[(name, step)] = ref
    models[name] = (100, ckpts)
  docs = root / "docs"
  docs.mkdir()
  for i in range(4):
    (docs / f"{i}.txt").write_text(f"Document {i} tells of the river and the mill. " * 6)
  config = decode_config.get_config()
  config.trajectory = write_manifest(str(root / "traj.json"), models)
  config.tokenizer = str(OPT_TOKENIZER)
  config.data.files = str(docs / "*.txt")
  config.data.max_docs = 2  # prompts from documents 0 and 1; 2 and 3 are corrupted
  config.configs = ("ps-pl", "pl")
  config.max_new_tokens = NEW_TOKENS
  config.batch_size = 4
  config.score_batch_size = 4
  config.corrupted.fractions = (0.2, 1.0)
  config.corrupted.max_length = 16
  out = decode_study.run(config, str(root / "plain"))
  return config, out, refs


def _outputs(out):
  texts = common.read_jsonl(out["generations"])
  rows = generation.read_rows(out["generated_ppl"], generation.PPL_FIELDS)
  crows = generation.read_rows(out["corrupted_ppl"], generation.CORRUPT_FIELDS)
  return texts, rows, crows


def _assert_same(got, want):
  """Token ids identical; every perplexity within 1e-5 (relative); rows in the same order."""
  (texts, rows, crows), (texts0, rows0, crows0) = _outputs(got), _outputs(want)
  key = lambda t: (t["config"], t["method"], t["doc"])
  assert [key(t) for t in texts] == [key(t) for t in texts0]
  assert [t["generated_ids"] for t in texts] == [t["generated_ids"] for t in texts0]
  for a, b in ((rows, rows0), (crows, crows0)):
    assert [{k: v for k, v in r.items() if k != "ppl"} for r in a] == \
           [{k: v for k, v in r.items() if k != "ppl"} for r in b]
    np.testing.assert_allclose([r["ppl"] for r in a], [r["ppl"] for r in b], rtol=1e-5)


def test_plain_run_orders_models_by_size(plain):
  config, out, refs = plain
  texts, rows, crows = _outputs(out)
  # The large model is the larger one, not the manifest's first: greedy "pl" texts are its own.
  large = trajax.load_hf(os.path.join(os.path.dirname(config.trajectory), "l", "step30"))
  pl = [t for t in texts if t["config"] == "pl" and t["method"] == "greedy"]
  single = decoding.generate_single(large, np.asarray([t["prompt_ids"] for t in pl]),
                                    max_new_tokens=NEW_TOKENS, vocab_size=50265)
  assert [t["generated_ids"] for t in pl] == single.continuations()
  # Rows smallest model first, each trajectory in step order.
  assert [(r["model"], r["step"]) for r in rows[::4]] == [("s", 10), ("s", 30), ("l", 10),
                                                          ("l", 30)]
  assert [r["model"] for r in crows] == ["s", "s", "l", "l"]
  # One row recomputed from the final small checkpoint's per-token log-probs.
  small = trajax.load_hf(os.path.join(os.path.dirname(config.trajectory), "s", "step30"))
  row = next(r for r in rows
             if (r["model"], r["step"], r["config"], r["method"]) == ("s", 30, "ps-pl", "nucleus"))
  nll = []
  for t in texts:
    if (t["config"], t["method"]) == ("ps-pl", "nucleus"):
      lp = trajax.token_logprobs(small, np.asarray([t["prompt_ids"] + t["generated_ids"]]))
      nll += (-lp[0, len(t["prompt_ids"]):]).tolist()
  np.testing.assert_allclose(row["ppl"], np.exp(np.mean(nll)), rtol=1e-5)
  # Model sizes on the figures' axes are torch's parameter counts.
  fig = common.read_csv(out["fig6_final"][:-len(".png")] + ".csv", parse={"params": float})
  params = {r["model"]: r["params"] for r in fig}
  for name in SIZES:
    assert params[name] == sum(p.numel() for p in refs[(name, 30)].parameters())


def test_converted_manifest_equals_plain_run(plain, tmp_path):
  config, out, _ = plain
  config = config.copy_and_resolve_references()
  config.trajectory = convert.convert_trajectory(config.trajectory, str(tmp_path / "orbax"))
  config.tokenizer = str(OPT_TOKENIZER)
  got = decode_study.run(config, str(tmp_path / "w"))
  assert json.load(open(config.trajectory))["models"][0]["name"] == "l"
  _assert_same(got, out)


@pytest.mark.skipif(jax.device_count() < 8,
                    reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
def test_mesh_run_equals_plain_run(plain, tmp_path):
  config, out, _ = plain
  config = config.copy_and_resolve_references()
  config.mesh_shape = "2,2,2"
  got = decode_study.run(config, str(tmp_path / "w"))
  _assert_same(got, out)
  config.score_batch_size = 3
  with pytest.raises(ValueError, match=r"score_batch_size=3 must be a multiple of the mesh's "
                     r"data axis \(2"):
    decode_study.run(config, str(tmp_path / "w2"))


def test_two_process_run_equals_plain_run(plain, tmp_path):
  """Two processes of 4 CPU devices on one (2, 2, 2) mesh: process 0 alone writes."""
  config, out, _ = plain
  workdir = tmp_path / "w"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  logs = [(tmp_path / f"p{pid}.out", tmp_path / f"p{pid}.err") for pid in range(2)]
  with reserved_port() as port, contextlib.ExitStack() as files:
    flags = [
        f"--config.trajectory={config.trajectory}", f"--config.tokenizer={config.tokenizer}",
        f"--config.data.files={config.data.files}", "--config.data.max_docs=2",
        "--config.configs=('ps-pl', 'pl')", f"--config.max_new_tokens={NEW_TOKENS}",
        "--config.batch_size=4", "--config.score_batch_size=4",
        "--config.corrupted.fractions=(0.2, 1.0)", "--config.corrupted.max_length=16",
        "--config.mesh_shape=2,2,2", f"--workdir={workdir}",
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"
    ]
    procs = []
    for pid in range(2):
      # Output to files, not pipes: a process blocked on a full pipe nobody drains would
      # stall both at their next collective.
      stdout, stderr = (files.enter_context(open(f, "w")) for f in logs[pid])
      procs.append(
          subprocess.Popen([
              sys.executable,
              str(ROOT / "launch" / "decode.py"), f"--config={ROOT}/configs/decode.py", *flags,
              f"--process_id={pid}"
          ], env=env, stdout=stdout, stderr=stderr))
    for p in procs:
      p.wait(timeout=HANG_GUARD_S)
  results = [(o.read_text(), e.read_text()) for o, e in logs]
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  assert "8 global devices" in results[0][1]
  # Both return the same outputs (the launcher prints "name<TAB>path"); the files are process 0's.
  printed = [[line for line in o.splitlines() if "\t" in line] for o, _ in results]
  assert printed[0] == printed[1] and any(p.startswith("generated_ppl") for p in printed[0])
  got = dict(line.split("\t") for line in printed[0])
  _assert_same(got, out)


def test_corrupted_texts_come_from_the_documents_after_the_prompts(plain):
  config, out, refs = plain
  texts, _, crows = _outputs(out)
  docs = os.path.dirname(config.data.files)
  assert {t["doc"] for t in texts} == {os.path.join(docs, f"{i}.txt") for i in (0, 1)}
  # By hand: documents 2 and 3 (not 0 and 1, the prompts'), their first 16 tokens, BOS
  # prepended, 20% and 100% of the tokens replaced, scored by torch's final checkpoints.
  import torch
  from trajax import checkpoints, corruption
  tok = checkpoints.load_tokenizer(str(OPT_TOKENIZER))
  seqs = [
      tok(open(os.path.join(docs, f"{i}.txt")).read(), add_special_tokens=False)["input_ids"][:16]
      for i in (2, 3)
  ]
  vocab_ids = corruption.candidate_ids(len(tok), exclude=[1, 2])  # <pad>, </s> (= <s> = <unk>)
  assert [r["n_seqs"] for r in crows] == [2] * 4
  for name in SIZES:
    for f in (0.2, 1.0):
      nll = []
      for i, s in enumerate(seqs):
        ids = [2] + corruption.replace(s, f, vocab_ids, generation.corruption_seed(0, f, i),
                                       16).tolist()
        with torch.no_grad():
          logits = refs[(name, 30)](input_ids=torch.tensor([ids])).logits.double()
        lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])
        nll += (-lp[:, 0]).tolist()
      row = next(r for r in crows if r["model"] == name and r["fraction"] == f)
      assert row["n_tokens"] == 32
      np.testing.assert_allclose(row["ppl"], np.exp(np.mean(nll)), rtol=1e-5)


def test_corrupted_corpus_is_configurable_and_held_out_by_default(tmp_path):
  from trajax import data
  docs = [data.Document(n, "text " * 20) for n in ("a", "b", "c", "d")]
  config = decode_config.get_config()
  # The prompts came from a and c (b was too short): only d follows them.
  picked = decode_study.corrupted_documents(config, docs, [{"doc": "a"}, {"doc": "c"}])
  assert [d.name for d in picked] == ["d"]
  with pytest.raises(
      ValueError, match=r"config.corrupted.data.files is empty and no document "
      r"of config.data.files follows the 2 prompt documents"):
    decode_study.corrupted_documents(config, docs, [{"doc": "a"}, {"doc": "d"}])
  # A corpus of its own (the paper: opensubtitles), whatever the prompts.
  (tmp_path / "subs.jsonl").write_text('{"text": "one line"}\n{"text": "two lines"}\n')
  config.corrupted.data.files = str(tmp_path / "subs.jsonl")
  picked = decode_study.corrupted_documents(config, docs, [{"doc": "a"}, {"doc": "d"}])
  assert [d.text for d in picked] == ["one line", "two lines"]


# ---------------------------------------------------------------------------
# Fig. 7: the texts under another family (a tiny GPT-Neo with its own tokenizer).

NEO_CORPUS = ["Document 3 tells of the river and the mill. " * 4, "The miller sings to the fish."]


def _neo_tokenizer(path):
  """A small byte-level BPE in GPT-Neo's format: <|endoftext|> is bos and eos, none is added."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  from transformers import GPT2Tokenizer
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(
      NEO_CORPUS,
      trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  merges = json.loads(tok.to_str())["model"]["merges"]
  merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
  GPT2Tokenizer(vocab=tok.get_vocab(), merges=merges, bos_token="<|endoftext|>",
                eos_token="<|endoftext|>", add_bos_token=False).save_pretrained(path)
  from trajax import checkpoints
  return checkpoints.load_tokenizer(path)


def _hf_neo(seed, hidden, vocab):
  import torch
  from transformers import GPTNeoConfig, GPTNeoForCausalLM
  torch.manual_seed(seed)
  return GPTNeoForCausalLM(
      GPTNeoConfig(vocab_size=vocab, hidden_size=hidden, num_layers=2, num_heads=2,
                   intermediate_size=2 * hidden, max_position_embeddings=128,
                   attention_types=[[["global", "local"],
                                     1]], window_size=8, attn_implementation="eager")).eval()


def test_retokenize_splits_where_the_generated_characters_start(tmp_path):
  from trajax import checkpoints
  from trajax.analysis import cross_family
  opt_tok = checkpoints.load_tokenizer(str(OPT_TOKENIZER))
  neo = _neo_tokenizer(tmp_path / "neo")
  enc = lambda tok, s: tok(s, add_special_tokens=False)["input_ids"]
  # At a word boundary: the prompt's and the continuation's own encodings, side by side;
  # OPT's BOS and EOS are not text.
  text = {
      "prompt_ids": [2] + enc(opt_tok, "The river"),
      "generated_ids": enc(opt_tok, " runs past the mill") + [2], "config": "pl"
  }
  (got,) = cross_family.retokenize([text], opt_tok, neo)
  assert got["prompt_ids"] == enc(neo, "The river")
  assert got["generated_ids"] == enc(neo, " runs past the mill")
  assert got["text"] == "The river runs past the mill" and got["boundary"] == 9
  # Inside a word: the token holding "ri|ver" holds generated characters, so it is generated.
  text = {
      "prompt_ids": [2] + enc(opt_tok, "The ri"), "generated_ids": enc(opt_tok, "ver"),
      "config": "pl"
  }
  (got,) = cross_family.retokenize([text], opt_tok, neo)
  ids = enc(neo, "The river")
  assert got["prompt_ids"] + got["generated_ids"] == ids
  assert neo.decode(got["prompt_ids"]) == "The" and neo.decode(got["generated_ids"]) == " river"


def test_cross_family_scores_equal_torch_gpt_neo(plain, tmp_path):
  import shutil
  import torch
  config, out, _ = plain
  tok_dir = tmp_path / "neo_tok"
  neo = _neo_tokenizer(tok_dir)
  refs, models = {}, {}
  for name, hidden in (("neo-l", 24), ("neo-s", 16)):  # listed large first
    refs[name] = _hf_neo(hidden, hidden, len(neo))
    path = save_hf(refs[name], tmp_path / name / "final")
    neo.save_pretrained(path)
    models[name] = (100, [(50, path)])
  config = config.copy_and_resolve_references()
  config.cross_family_trajectory = write_manifest(str(tmp_path / "neo.json"), models)
  workdir = tmp_path / "w"
  shutil.copytree(os.path.dirname(out["generations"]), workdir / "decode")  # resume: Fig. 7 only
  got = decode_study.run(config, str(workdir))
  rows = generation.read_rows(got["cross_family_ppl"], generation.PPL_FIELDS)
  assert [r["model"] for r in rows[::4]] == ["neo-s", "neo-l"]  # by size
  texts = common.read_jsonl(got["generations"])
  opt_tok = trajax.checkpoints.load_tokenizer(str(OPT_TOKENIZER))
  for name, ref in refs.items():
    for row in (r for r in rows if r["model"] == name):
      nll = []
      for t in texts:
        if (t["config"], t["method"]) != (row["config"], row["method"]):
          continue
        prompt = opt_tok.decode(t["prompt_ids"], skip_special_tokens=True)
        full = opt_tok.decode(t["prompt_ids"] + t["generated_ids"], skip_special_tokens=True)
        ids = neo(full, add_special_tokens=False)["input_ids"]
        # The first token whose decoded prefix reaches past the prompt's characters.
        k = next(i for i in range(len(ids) + 1)
                 if i == len(ids) or len(neo.decode(ids[:i + 1])) > len(prompt))
        with torch.no_grad():
          logits = ref(input_ids=torch.tensor([ids])).logits.double()[0]
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        nll += (-lp[max(k, 1) - 1:]).tolist()
      assert row["n_tokens"] == len(nll)
      np.testing.assert_allclose(row["ppl"], np.exp(np.mean(nll)), rtol=1e-5)
  fig = common.read_csv(got["fig7"][:-len(".png")] + ".csv", parse={"params": float})
  for r in fig:
    assert r["params"] == sum(p.numel() for p in refs[r["model"]].parameters())


def test_mauve_rows_against_torch_features(plain):
  import torch
  from trajax.analysis import generation_quality, mauve
  config, out, refs = plain
  texts = common.read_jsonl(out["generations"])
  rows = common.read_csv(out["mauve"], generation_quality.MAUVE_FIELDS,
                         parse=generation_quality.NUMBERS)
  assert {(r["config"], r["method"]) for r in rows
         } == {(c, m) for c in config.configs for m in config.methods}
  # Human side by hand: each prompt document's tokens 5..5+NEW_TOKENS after [BOS] + its prompt.
  from trajax import checkpoints
  tok = checkpoints.load_tokenizer(str(OPT_TOKENIZER))
  docs = os.path.dirname(config.data.files)
  human = []
  for i in (0, 1):
    ids = tok(open(os.path.join(docs, f"{i}.txt")).read(), add_special_tokens=False)["input_ids"]
    human.append([2] + ids[:5 + NEW_TOKENS])
  large = refs[("l", 30)]  # the features are the large model's final hidden states (torch here)

  def feats(seqs):
    with torch.no_grad():
      return np.stack([
          large(input_ids=torch.tensor([s]),
                output_hidden_states=True).hidden_states[-1][0, -1].numpy() for s in seqs
      ])

  for r in rows:
    group = [t for t in texts if (t["config"], t["method"]) == (r["config"], r["method"])]
    want = mauve.compute_mauve(feats(human),
                               feats([t["prompt_ids"] + t["generated_ids"] for t in group]))
    assert (r["n_human"], r["n_generated"], r["num_buckets"]) == (2, 2, 2)
    np.testing.assert_allclose(r["mauve"], want.mauve, rtol=1e-6)
