"""Fuzzed researcher inputs: documents, config.json, shard indexes, store metadata, generation
files. Every bad input gives an error naming the file and the line, field or key; never a
crash with an unrelated exception, never silently wrong data.

The document, make_blocks and generation-file readers are checked against oracles written
here; the config, index and store readers against properties: a ValueError naming the file
and the field, or a result that is consistent (the abstract model builds and holds exactly
the file's values; every listed tensor is read from a file inside the checkpoint; the store
reads without error).
"""
import csv
import io
import json
import math
import os
import re

import numpy as np
import pytest
from conftest import OPT_TOKENIZER
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trajax import checkpoints, data, hf_checkpoints, safetensors_io, store
from trajax.analysis import common, generation

# Each @settings below inherits the conftest profile: no deadline, no "too slow" health check,
# derandomized, no example database.
SEEN, REFUSED = {}, {}  # cases tried and, of those, refused with a clear error


def _seen(kind):
  SEEN[kind] = SEEN.get(kind, 0) + 1


def _refused(kind):
  REFUSED[kind] = REFUSED.get(kind, 0) + 1


def _fresh_dir(tmp_path, kind):
  """A new directory per example (hypothesis reuses one tmp_path for all of them)."""
  path = tmp_path / f"{kind}{SEEN[kind]}"
  path.mkdir()
  return path


json_scalars = (st.none() | st.booleans() | st.integers(-10, 10) | st.floats() |
                st.text(max_size=8))
json_values = st.recursive(
    json_scalars, lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["text", "body", "x", ""]), children, max_size=3), max_leaves=8)

# ---------------------------------------------------------------------------
# 1. Documents: JSONL lines and raw text files.

SPECIAL_TEXTS = [
    "", " ", "\n\t ", "\ufeff", "\ufeff\ufeffa", "a\u2028b", "\x00nul", "tab\there",
    "\ud800 lone surrogate", "pair \U0001f600", "x" * 5000, "\r\n", "a\rb"
]
doc_texts = st.text(max_size=30) | st.sampled_from(SPECIAL_TEXTS)


@st.composite
def jsonl_lines(draw):
  """One line of a JSONL file, as bytes (without its newline)."""
  kind = draw(st.sampled_from(["doc", "doc", "doc", "json", "blank", "bytes", "raw"]))
  if kind == "doc":
    obj = {draw(st.sampled_from(["text", "text", "body"])): draw(doc_texts)}
    if draw(st.booleans()):
      obj["id"] = draw(json_scalars)
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
  if kind == "json":
    return json.dumps(draw(json_values)).encode()
  if kind == "blank":
    return draw(st.sampled_from([b"", b" ", b"\t", b"\r"]))
  if kind == "bytes":
    return draw(st.binary(max_size=12)).replace(b"\n", b"")
  return draw(
      st.sampled_from([
          b'{"text": "a"', b'{"text": "\x00"}', b'{"text": "\xff"}', b'{"text": "\xed\xa0\x80"}',
          b"[" * 3000, b"1" * 5000, b'{"text": "a"}{"text": "b"}', b'{"text": NaN}', b"\x00"
      ]))


def _jsonl_oracle(raw: bytes, key: str):
  """(first bad line or None, [(line, text)] of usable documents, number of empty ones)."""
  docs, empty = [], 0
  for lineno, line in enumerate(raw.split(b"\n"), 1):
    if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
      line = line[3:]
    try:
      s = line.decode("utf-8")
    except UnicodeDecodeError:
      return lineno, docs, empty
    if not s.strip():
      continue
    if "\x00" in s:
      return lineno, docs, empty
    try:
      obj = json.loads(s)
    except (ValueError, RecursionError):
      return lineno, docs, empty
    if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
      return lineno, docs, empty
    try:
      obj[key].encode("utf-8")
    except UnicodeEncodeError:  # an escaped lone surrogate: no tokenizer takes it
      return lineno, docs, empty
    if obj[key].strip():
      docs.append((lineno, obj[key]))
    else:
      empty += 1
  return None, docs, empty


@settings(max_examples=200)
@given(lines=st.lists(jsonl_lines(), max_size=6), key=st.sampled_from(["text", "body"]),
       crlf=st.booleans())
@example(lines=[b'{"text": "ok"}', b"\xff"], key="text", crlf=False)
@example(lines=[b"1" * 5000], key="text", crlf=False)
@example(lines=[b"[" * 3000], key="text", crlf=False)
@example(lines=[b'{"text": "\\ud800"}'], key="text", crlf=False)
def test_fuzzed_jsonl_documents(tmp_path, lines, key, crlf):
  _seen("jsonl documents")
  path = tmp_path / "d.jsonl"
  raw = (b"\r\n" if crlf else b"\n").join(lines)
  path.write_bytes(raw)
  bad, want, empty = _jsonl_oracle(raw.replace(b"\r\n", b"\n"), key)
  log = []
  try:
    docs = data.read_documents(str(path), text_key=key, log=log.append)
  except ValueError as e:
    _refused("jsonl documents")
    assert bad is not None, f"unexpected error: {e}"
    assert f"{path}:{bad}:" in str(e), f"error does not name line {bad}: {e}"
  else:
    assert bad is None, f"line {bad} was accepted"
    assert [(d.name, d.text) for d in docs] == [(f"{path}:{n}", t) for n, t in want]
    assert log == ([f"skipped {empty} empty document(s)"] if empty else [])


def _gutenberg_oracle(text: str) -> str:
  i = text.find(data.GUTENBERG_START)
  if i >= 0:
    j = text.find("\n", i)
    text = "" if j < 0 else text[j + 1:]  # the START line itself is never body
  cuts = [k for k in (text.find(m) for m in data.GUTENBERG_END) if k >= 0]
  return (text[:min(cuts)] if cuts else text).strip()


gutenberg_texts = st.lists(
    st.sampled_from([
        "*** START OF THE PROJECT GUTENBERG EBOOK X ***",
        "*** END OF THE PROJECT GUTENBERG EBOOK X", "End of the Project Gutenberg",
        "End of Project Gutenberg", "\n", "\r\n", "Body text.", " ", "\ufeff"
    ]), max_size=8).map("".join)


@settings(max_examples=200)
@given(
    raw=st.one_of(st.binary(max_size=40),
                  doc_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
                  gutenberg_texts.map(str.encode)), gutenberg=st.booleans())
@example(raw="\ufeff\ufeffZero-width no-break space".encode(), gutenberg=False)
@example(raw=b"*** START OF THE PROJECT GUTENBERG EBOOK X ***", gutenberg=True)
def test_fuzzed_text_documents(tmp_path, raw, gutenberg):
  _seen("text documents")
  path = tmp_path / "d.txt"
  path.write_bytes(raw)
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    text = None
  log = []
  try:
    docs = data.read_documents(str(path), gutenberg=gutenberg, log=log.append)
  except ValueError as e:
    _refused("text documents")
    assert text is None or "\x00" in text, f"unexpected error: {e}"
    assert str(path) in str(e)
    return
  assert text is not None and "\x00" not in text
  text = text.removeprefix("\ufeff").replace("\r\n", "\n")  # one BOM; CRLF line ends
  text = _gutenberg_oracle(text) if gutenberg else text
  if text.strip():
    assert [(d.name, d.text) for d in docs] == [(str(path), text)]
  else:
    assert docs == [] and log == ["skipped 1 empty document(s)"]


@pytest.fixture(scope="module")
def tok():
  return checkpoints.load_tokenizer(OPT_TOKENIZER)


# Long words run together: a prefix cut inside one tokenizes differently from the whole text.
LONG_WORDS = [
    "information", "international", "communication", "responsibility", "understanding",
    "environmental", "the", "and", "ing"
]
WORDS = LONG_WORDS + [" ", "-", "\n", "日本語", "中文字", "é", "e\u0301", "\U0001f600"]


@settings(max_examples=120)
@given(
    texts=st.lists(
        st.lists(st.sampled_from(LONG_WORDS), min_size=6, max_size=30).map("".join) |
        st.lists(st.sampled_from(WORDS), max_size=40).map("".join), max_size=4),
    block_len=st.integers(-1, 16), max_docs=st.sampled_from([None, -1, 0, 1, 2, 3]),
    bos_id=st.sampled_from([None, -1, 0, 2]), min_tokens=st.integers(0, 6))
@example(
    texts=[("information responsibilityinformationinformationunderstandingandunderstanding"
            "thecommunicationingcommunication")], block_len=11, max_docs=None, bos_id=-1,
    min_tokens=2)
def test_fuzzed_make_blocks(tok, texts, block_len, max_docs, bos_id, min_tokens):
  """Each block is [BOS] + the start of the document's whole tokenisation, padded and masked."""
  _seen("make_blocks")
  docs = [data.Document(f"d{i}", t) for i, t in enumerate(texts)]
  bos = tok.bos_token_id if bos_id is None else bos_id
  prefix = [] if bos < 0 else [bos]
  want = []
  for d in docs:
    ids = prefix + tok(d.text, add_special_tokens=False)["input_ids"][:block_len - len(prefix)]
    if len(ids) >= min_tokens and (max_docs is None or len(want) < max_docs):
      want.append((d.name, ids))
  try:
    blocks = data.make_blocks(docs, tok, block_len=block_len, max_docs=max_docs, bos_id=bos_id,
                              min_tokens=min_tokens)
  except ValueError as e:
    _refused("make_blocks")
    msg = str(e)
    assert (block_len < 2 and "block_len" in msg or
            max_docs is not None and max_docs < 1 and "max_docs" in msg or
            not want and "no document" in msg), msg
    return
  assert block_len >= 2 and (max_docs is None or max_docs >= 1) and want
  assert blocks.names == [n for n, _ in want]
  assert blocks.tokens.shape == blocks.mask.shape == (len(want), block_len)
  for row, (_, ids) in enumerate(want):
    assert blocks.tokens[row][blocks.mask[row]].tolist() == ids
    assert blocks.mask[row].tolist() == [True] * len(ids) + [False] * (block_len - len(ids))


# ---------------------------------------------------------------------------
# 2. Checkpoint config.json: valid transformers configs with fields mutated.


def _hf_configs():
  from transformers import GPTNeoConfig, GPTNeoXConfig, OPTConfig
  from transformers.utils import logging as hf_logging
  level = hf_logging.get_verbosity()
  hf_logging.set_verbosity_error()  # tiny vocabularies make transformers warn about token ids
  try:
    opt = OPTConfig(vocab_size=96, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                    num_attention_heads=4, max_position_embeddings=64).to_dict()
    neo = GPTNeoConfig(vocab_size=96, hidden_size=16, num_layers=2, num_heads=4,
                       max_position_embeddings=64, attention_types=[[["global", "local"],
                                                                     1]], window_size=4).to_dict()
    neox = GPTNeoXConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64).to_dict()
  finally:
    hf_logging.set_verbosity(level)
  opt350 = dict(opt, word_embed_proj_dim=8, do_layer_norm_before=False)
  pythia = {k: v for k, v in neox.items() if k != "rope_parameters"}
  pythia.update(rotary_pct=0.25, rotary_emb_base=10000)  # the released Pythia spelling
  return {"opt": opt, "opt350": opt350, "gpt_neo": neo, "gpt_neox": neox, "pythia": pythia}


HF_CONFIGS = _hf_configs()
COMMON = [
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"
]
CONFIG_FIELDS = {
    "opt": COMMON + [
        "ffn_dim", "word_embed_proj_dim", "do_layer_norm_before", "_remove_final_layer_norm",
        "activation_function", "enable_bias", "layer_norm_elementwise_affine", "init_std"
    ],
    "gpt_neo": COMMON + [
        "num_layers", "num_heads", "intermediate_size", "attention_layers", "attention_types",
        "window_size", "activation_function", "layer_norm_epsilon", "initializer_range"
    ],
    "gpt_neox": COMMON + [
        "intermediate_size", "hidden_act", "rotary_pct", "rotary_emb_base", "rope_parameters",
        "rope_scaling", "layer_norm_eps", "use_parallel_residual", "attention_bias",
        "initializer_range"
    ],
}
CONFIG_FIELDS["opt350"], CONFIG_FIELDS["pythia"] = CONFIG_FIELDS["opt"], CONFIG_FIELDS["gpt_neox"]
# HF field -> the trajax Config attribute that must hold exactly the file's value.
DIRECT = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size",
    "max_position_embeddings": "max_position_embeddings", "ffn_dim": "ffn_dim",
    "do_layer_norm_before": "do_layer_norm_before", "enable_bias": "enable_bias",
    "_remove_final_layer_norm": "remove_final_layer_norm",
    "layer_norm_elementwise_affine": "layer_norm_elementwise_affine",
    "tie_word_embeddings": "tie_word_embeddings", "use_parallel_residual": "use_parallel_residual",
    "attention_bias": "attention_bias", "window_size": "window_size",
    "activation_function": "activation_function", "hidden_act": "hidden_act",
    "init_std": "init_std", "initializer_range": "initializer_range",
    "layer_norm_epsilon": "layer_norm_epsilon", "layer_norm_eps": "layer_norm_eps"
}
# An error about a field may name it by another spelling that the file also uses.
ALIASES = {
    "num_layers": ["num_hidden_layers"], "num_hidden_layers": ["num_layers"],
    "num_heads": ["num_attention_heads"], "num_attention_heads": ["num_heads"],
    "attention_types": ["attention_layers"], "attention_layers": ["attention_types"],
    "rope_parameters": ["rope_type", "partial_rotary_factor", "rope_theta"],
    "rope_scaling": ["rope_type", "partial_rotary_factor", "rope_theta"]
}
DELETE = object()

hostile_values = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, 1, 2, 3, 4, 8, 16, 17, 32, 64, -1, -16, 2**31, 2**63, 10**30]),
    st.sampled_from([0.0, 0.25, 0.3, 0.5, 1.0, 1.5, 16.0, 16.5, -0.5, 1e-5, math.nan, math.inf]),
    st.sampled_from([
        "", "16", "relu", "gelu", "gelu_new", "swish", "tanh", "true", "false", "global", "local",
        "opt", "gpt_neo", "llama"
    ]),
    st.sampled_from([[], [2], [2, 3], ["global", "local"], ["global"], ["local", "global", "x"],
                     [[["global", "local"], 1]], [[["local"], 2]], [[["global", "local"], -1]],
                     [[["global", "local"], "1"]], [["global", 2]], [[["global"], 1.5]],
                     [["global", "local"], 1], [[["x"], 2]], [[[], 3]], [None], [[None, 2]],
                     [[["global", "local"], 1, 2]], [[["global", "local"], 10**12]],
                     [[{"global": 1}, 2]]]),
    st.sampled_from([{}, {"rope_type": "default"}, {"rope_type": "linear",
                                                    "factor": 2.0}, {"partial_rotary_factor": 0.5},
                     {"partial_rotary_factor": 0.3}, {"partial_rotary_factor": "0.25"},
                     {"rope_theta": -1.0}, {"rope_theta": 10000}, {"type": "dynamic"},
                     {"rope_type": None}, {"rope_type": "default", "partial_rotary_factor": 2.0}]))


@st.composite
def mutated_configs(draw):
  base = draw(st.sampled_from(sorted(HF_CONFIGS)))
  edits = draw(
      st.lists(st.tuples(st.sampled_from(CONFIG_FIELDS[base]), hostile_values | st.just(DELETE)),
               min_size=1, max_size=3))
  return base, dict(edits)


@settings(max_examples=400)
@given(case=mutated_configs())
@example(case=("opt", {"num_attention_heads": 0}))
@example(case=("opt", {"do_layer_norm_before": "false"}))
@example(case=("opt", {"model_type": ["opt"]}))
@example(case=("gpt_neo", {"attention_layers": DELETE, "attention_types": [["global", 2]]}))
@example(case=("gpt_neox", {"rope_parameters": ["default"]}))
@example(case=("opt", {"eos_token_id": []}))
@example(case=("gpt_neo", {"num_heads": -4, "hidden_size": 16}))
def test_fuzzed_config_gives_value_error_or_builds(tmp_path, case):
  """A ValueError naming config.json and a field it mutated, or a config whose abstract model
  builds and which holds exactly the values the file has."""
  import jax.numpy as jnp
  from flax import nnx
  _seen("config.json")
  base, edits = case
  hf = dict(HF_CONFIGS[base])
  for key, value in edits.items():
    if value is DELETE:
      hf.pop(key, None)
    else:
      hf[key] = value
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir(exist_ok=True)
  (ckpt / "config.json").write_text(json.dumps(hf))
  try:
    fam, cfg = checkpoints.model_config(ckpt)
  except ValueError as e:
    _refused("config.json")
    msg = str(e)
    assert str(ckpt / "config.json") in msg, msg
    if "model_type" not in edits:
      named = [k for key in edits for k in [key] + ALIASES.get(key, [])]
      assert any(repr(k) in msg or f"{k}=" in msg or f"{k} " in msg for k in named), (edits, msg)
    return
  nnx.eval_shape(lambda: fam.create(cfg, dtype=jnp.float32, seed=None))
  assert fam.param_count(cfg) > 0 and fam.flops_params(cfg) >= 0
  assert len(fam.hf_rules(cfg)) >= 3 and isinstance(fam.ignored_hf_keys(cfg), set)
  for key, value in edits.items():
    if key in DIRECT and key in hf and value is not DELETE:  # no silent coercion
      got = getattr(cfg, DIRECT[key])
      assert got == value and isinstance(got, bool) == isinstance(value, bool), (key, value, got)
  assert fam.Config.from_hf_config(cfg.to_hf_config()) == cfg


@pytest.mark.parametrize("raw", [
    b"", b"\xff\xfe{}", b"[" * 5000, b'{"model_type": 1' + b"0" * 5000 + b"}", b"[]",
    b'{"model_type": null}', b'{"model_type": {}}', b'{"model_type": "opt", "vocab_size": NaN}'
])
def test_hostile_config_json_bytes(tmp_path, raw):
  (tmp_path / "config.json").write_bytes(raw)
  with pytest.raises(ValueError, match=str(tmp_path / "config.json")):
    checkpoints.model_config(tmp_path)


def test_every_truncation_of_a_config_json(tmp_path):
  raw = json.dumps(HF_CONFIGS["gpt_neo"]).encode()
  for cut in range(len(raw)):
    _seen("config.json truncations")
    (tmp_path / "config.json").write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=str(tmp_path / "config.json")):
      checkpoints.model_config(tmp_path)


# ---------------------------------------------------------------------------
# 3. Sharded checkpoint indexes.


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  """ckpt/{s1 (a, b), s2 (c)}.safetensors, a shard in a subfolder, a folder named like a shard,
  a symlinked shard (as in the Hugging Face cache), and a shard outside the checkpoint."""
  root = tmp_path_factory.mktemp("shards")
  ckpt = root / "ckpt"
  (ckpt / "sub").mkdir(parents=True)
  (ckpt / "dir.safetensors").mkdir()
  safetensors_io.save({"a": np.ones(2, np.float32), "b": np.zeros(3, np.float32)},
                      ckpt / "s1.safetensors")
  safetensors_io.save({"c": np.arange(4, dtype=np.float32)}, ckpt / "s2.safetensors")
  safetensors_io.save({"a": np.ones(2, np.float32)}, ckpt / "sub" / "s1.safetensors")
  safetensors_io.save({"a": np.ones(2, np.float32)}, root / "outside.safetensors")
  os.symlink(ckpt / "s2.safetensors", ckpt / "link.safetensors")
  return ckpt


def _plain_name(name):
  return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and
          "\x00" not in name)


@st.composite
def index_docs(draw, outside):
  shard = st.sampled_from([
      "s1.safetensors", "s2.safetensors", "link.safetensors", "missing.safetensors",
      "dir.safetensors", "sub/s1.safetensors", "./s1.safetensors", "../outside.safetensors",
      outside, "/etc/passwd", ".", "..", "", "s1.safetensors\x00"
  ]) | json_scalars
  weight_map = st.dictionaries(st.sampled_from(["a", "b", "c", "z"]), shard, max_size=4)
  return draw(
      st.one_of(
          st.fixed_dictionaries({"weight_map": weight_map}, optional={"metadata": json_values}),
          st.fixed_dictionaries({"weight_map": json_values}), json_values))


@pytest.mark.parametrize("index_name",
                         [hf_checkpoints.SAFETENSORS_INDEX, hf_checkpoints.TORCH_BIN_INDEX])
@settings(max_examples=120)
@given(data_=st.data())
def test_fuzzed_shard_index(shard_dir, index_name, data_):
  """Refused with the index named, or every listed tensor read from a file in the directory."""
  _seen("shard indexes")
  outside = str(shard_dir.parent / "outside.safetensors")
  doc = data_.draw(index_docs(outside))
  index = shard_dir / index_name
  try:
    index.write_text(json.dumps(doc))
    weights = hf_checkpoints.HFWeights(shard_dir)
  except (ValueError, FileNotFoundError) as e:
    _refused("shard indexes")
    assert str(index) in str(e), str(e)
    return
  finally:
    index.unlink()
  names = list(doc["weight_map"].values())
  assert all(_plain_name(n) for n in names), f"accepted shard names {names}"
  assert weights.keys() == set(doc["weight_map"])
  for key in sorted(weights.keys()):
    assert os.path.dirname(weights.source(key)) == str(shard_dir)
    assert weights.read(key).shape == weights.shape(key)


@pytest.mark.parametrize(
    "name", ["../outside.safetensors", "OUTSIDE", "sub/s1.safetensors", "..", "s1.safetensors/."])
def test_shard_outside_the_checkpoint_is_refused(shard_dir, name):
  name = name.replace("OUTSIDE", str(shard_dir.parent / "outside.safetensors"))
  index = shard_dir / hf_checkpoints.SAFETENSORS_INDEX
  index.write_text(json.dumps({"weight_map": {"a": name}}))
  try:
    with pytest.raises(
        ValueError, match=rf"{index}: shard name '{re.escape(name)}' for 'a' must "
        rf"be a file name in the checkpoint directory"):
      hf_checkpoints.HFWeights(shard_dir)
  finally:
    index.unlink()


def test_symlinked_shard_is_read(shard_dir):
  """Every file of a Hugging Face cache snapshot is a symlink (to ../../blobs/...)."""
  index = shard_dir / hf_checkpoints.SAFETENSORS_INDEX
  index.write_text(
      json.dumps(
          {"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "link.safetensors"}}))
  try:
    weights = hf_checkpoints.HFWeights(shard_dir)
  finally:
    index.unlink()
  assert weights.source("c") == str(shard_dir / "link.safetensors")
  np.testing.assert_array_equal(weights.read("c"), np.arange(4, dtype=np.float32))


@pytest.mark.parametrize("raw", [
    b"\xff{}", b"[" * 5000, b'{"weight_map": 1' + b"0" * 5000 + b"}", b'{"weight_map": []}',
    b'{"weight_map": {}}'
])
def test_hostile_index_bytes(shard_dir, raw):
  index = shard_dir / hf_checkpoints.SAFETENSORS_INDEX
  index.write_bytes(raw)
  try:
    with pytest.raises(ValueError, match=str(index)):
      hf_checkpoints.HFWeights(shard_dir)
  finally:
    index.unlink()


# ---------------------------------------------------------------------------
# 4. Result store metadata on reopen.

TOKENS = np.arange(16, dtype=np.int32).reshape(2, 8)
MASK = np.ones((2, 8), bool)
DATASET = {
    "dataset_hash": "d" * 64, "tokenizer_hash": "t" * 64, "block_shape": [2, 8],
    "documents": ["a.txt", "b.txt"], "n_predictions": 14
}
META = {"steps": [10, 20], "tokens_per_step": 100, "params": 1234, "paths": ["p/10", "p/20"]}


def _store(workdir):
  s = store.Store.create(str(workdir), dict(DATASET), TOKENS, MASK)
  s.model("m", dict(META)).write(0, np.full(16, -1.5, np.float32))
  return s


store_values = st.one_of(
    json_scalars,
    st.sampled_from([[], [2, 8], [8, 2], [2], [2, 8, 1], [-2, -8], ["2", "8"], [10, 20], [20, 10],
                     [10], [10, "20"], [10.5, 20], [True, False], ["a.txt"], ["a.txt", 3], {"x": 1},
                     10**30, "d" * 64, "t" * 64, 100, -100, 0, 2.5]))


@st.composite
def corrupt_json(draw, good):
  """The bytes of a corrupted copy of the JSON object `good`."""
  how = draw(st.sampled_from(["edit", "edit", "edit", "truncate", "bytes", "value"]))
  raw = json.dumps(good, indent=1, sort_keys=True).encode()
  if how == "truncate":
    return raw[:draw(st.integers(0, len(raw) - 1))]
  if how == "bytes":
    return draw(st.binary(max_size=20))
  if how == "value":
    return json.dumps(draw(json_values)).encode()
  obj = dict(good)
  for key, value in draw(
      st.lists(st.tuples(st.sampled_from(sorted(good) + ["x"]), store_values | st.just(DELETE)),
               min_size=1, max_size=3)):
    if value is DELETE:
      obj.pop(key, None)
    else:
      obj[key] = value
  return json.dumps(obj).encode()


def _use_store(workdir):
  """Everything the analyses read from a store, then a writer's reopen."""
  reader = store.open(str(workdir))
  for m in reader.models:
    steps, status = reader.steps(m), reader.status(m)
    assert steps.shape == status.shape and steps.dtype.kind == "i"
    reader.tokens_seen(m)
    reader.done_steps(m)
    reader.valid_ppl(m)
  assert reader.tokens.shape == tuple(reader.dataset["block_shape"])
  s = store.Store.create(str(workdir), dict(DATASET), TOKENS, MASK)
  rows = s.model("m", dict(META))
  assert rows.steps == META["steps"] and rows.status().shape == (2,)


@settings(max_examples=120)
@given(which=st.sampled_from(["dataset.json", "m/meta.json"]), data_=st.data())
@example(which="dataset.json", data_=None)
def test_fuzzed_store_metadata(tmp_path, which, data_):
  """Reopening a store whose metadata is corrupt: a ValueError naming that file, or a store
  that reads consistently."""
  _seen("store metadata")
  workdir = _fresh_dir(tmp_path, "store metadata")
  _store(workdir)
  path = workdir / "store" / which
  if data_ is None:
    raw = b'{"block_shape": [2, 8], "dataset_hash": 5}'
  else:
    raw = data_.draw(corrupt_json(DATASET if which == "dataset.json" else META))
  path.write_bytes(raw)
  try:
    _use_store(workdir)
  except ValueError as e:
    _refused("store metadata")
    assert str(path) in str(e), str(e)


def test_every_truncation_of_store_tokens(tmp_path):
  workdir = tmp_path / "w"
  _store(workdir)
  path = workdir / "store" / "tokens.npz"
  raw = path.read_bytes()
  for cut in list(range(0, len(raw), 7)):
    _seen("tokens.npz truncations")
    path.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=str(path)):
      store.open(str(workdir))


# ---------------------------------------------------------------------------
# 5. Generation files: generated texts (JSONL) and perplexity rows (CSV).


def _read_jsonl_oracle(raw: bytes, fields):
  out = []
  for lineno, line in enumerate(raw.split(b"\n"), 1):
    try:
      s = line.decode("utf-8")
    except UnicodeDecodeError:
      return lineno, out
    if not s.strip():
      continue
    try:
      obj = json.loads(s)
    except (ValueError, RecursionError):
      return lineno, out
    if not isinstance(obj, dict) or any(f not in obj for f in fields):
      return lineno, out
    out.append(obj)
  return None, out


@settings(max_examples=150)
@given(lines=st.lists(jsonl_lines(), max_size=5), fields=st.sampled_from([(), ("text",)]))
@example(lines=[b'{"text": "a"}', b"7"], fields=())
@example(lines=[b"\xff"], fields=())
def test_fuzzed_generation_jsonl(tmp_path, lines, fields):
  _seen("generation jsonl")
  path = tmp_path / "g.jsonl"
  raw = b"\n".join(lines)
  path.write_bytes(raw)
  bad, want = _read_jsonl_oracle(raw, fields)
  try:
    got = common.read_jsonl(path, fields=fields)  # how decode_study reads generations
  except ValueError as e:
    _refused("generation jsonl")
    assert bad is not None, f"unexpected error: {e}"
    assert f"{path}:{bad}:" in str(e), str(e)
  else:
    assert bad is None, f"line {bad} was accepted"
    assert json.dumps(got) == json.dumps(want)  # NaN-safe equality


csv_cells = st.one_of(
    st.sampled_from([
        "", "opt-125m", "7", "-3", "3.5", "nan", "inf", "1e3", "x", "2.0", "None", "\x00", "a,b",
        'q"uote', "l\nf"
    ]), st.text(max_size=5))


@st.composite
def csv_files(draw, fields):
  header = list(fields)
  how = draw(st.sampled_from(["ok", "ok", "header", "bytes"]))
  if how == "bytes":
    return draw(st.binary(max_size=60))
  if how == "header":
    header = draw(st.permutations(header + ["extra"]))[:draw(st.integers(0, len(header) + 1))]
  f = io.StringIO(newline="")
  w = csv.writer(f)
  w.writerow(header)
  for _ in range(draw(st.integers(0, 3))):
    width = len(header)
    w.writerow(draw(st.lists(csv_cells, min_size=max(0, width - 1), max_size=width + 1)))
  return f.getvalue().encode("utf-8", "surrogatepass")


INT_COLS = ("n_texts", "n_tokens", "n_seqs")


@settings(max_examples=200)
@given(data_=st.data(), fields=st.sampled_from([generation.PPL_FIELDS, generation.CORRUPT_FIELDS]))
def test_fuzzed_generation_csv(tmp_path, data_, fields):
  """A ValueError naming the file, or rows with every field, typed as the writer wrote them."""
  _seen("generation csv")
  path = tmp_path / "rows.csv"
  path.write_bytes(data_.draw(csv_files(fields)))
  try:
    rows = generation.read_rows(path, fields)
  except ValueError as e:
    _refused("generation csv")
    assert str(path) in str(e), str(e)
    return
  for r in rows:
    assert list(r) == list(fields)
    assert isinstance(r["model"], str) and (r["step"] == "" or type(r["step"]) is int)
    assert all(type(r[k]) is int for k in INT_COLS if k in r)
    assert all(type(r[k]) is float for k in ("ppl", "fraction") if k in r)


def test_zz_summary():  # runs last in this file: the counts of cases tried
  print(f"\nfuzz cases tried: {SEEN}\n  of which refused with a named error: {REFUSED}")
  assert SEEN.get("jsonl documents") == 204 and SEEN.get("config.json", 0) >= 400
  assert len(SEEN) == 10, SEEN
  # Every fuzzed input kind reached both outcomes: refused, and read.
  assert len(REFUSED) == 8 and all(0 < n < SEEN[k] for k, n in REFUSED.items()), REFUSED
