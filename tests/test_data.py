"""Documents -> token blocks, with the real OPT tokenizer and PG-19 books."""
import json

import numpy as np
import pytest

from trajax import checkpoints, data
from conftest import OPT_TOKENIZER, SHARED_DATA


@pytest.fixture(scope="module")
def tok():
  return checkpoints.load_tokenizer(OPT_TOKENIZER)


def test_opt_tokenizer_offline(tok):
  assert tok("Hello world")["input_ids"] == [2, 31414, 232]


def test_pg19_blocks_count_as_the_paper(tok):
  """5 books x 2048 tokens ([BOS] + 2047) -> 5 x 2047 context-token pairs (paper: 50 x 2047)."""
  docs = data.read_documents(str(SHARED_DATA / "pg19" / "*.txt"), gutenberg=True)
  assert len(docs) == 5
  blocks = data.make_blocks(docs, tok, block_len=2048, max_docs=50)
  assert blocks.tokens.shape == (5, 2048) and blocks.mask.all()
  assert blocks.n_predictions == 5 * 2047
  assert (blocks.tokens[:, 0] == 2).all()
  # The block is exactly the start of the whole document's tokenisation.
  text = docs[0].text
  full = tok(text[:40000], add_special_tokens=False)["input_ids"]
  np.testing.assert_array_equal(blocks.tokens[0, 1:], full[:2047])
  assert "*** START OF" not in tok.decode(blocks.tokens[2, 1:200])


def test_short_documents_padded_and_masked(tok, tmp_path):
  (tmp_path / "a.txt").write_text("One two three.")
  (tmp_path / "b.txt").write_text("   \n")
  msgs = []
  docs = data.read_documents(str(tmp_path / "*.txt"), log=msgs.append)
  assert [d.name for d in docs] == [str(tmp_path / "a.txt")
                                   ] and msgs == ["skipped 1 empty document(s)"]
  blocks = data.make_blocks(docs, tok, block_len=16)
  ids = [2] + tok("One two three.", add_special_tokens=False)["input_ids"]
  np.testing.assert_array_equal(blocks.tokens[0, :len(ids)], ids)
  assert blocks.mask[0].sum() == len(ids) and (blocks.tokens[0, len(ids):] == 1).all()
  assert blocks.n_predictions == len(ids) - 1


def test_jsonl_documents_and_errors(tmp_path):
  p = tmp_path / "d.jsonl"
  p.write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
  assert [d.text for d in data.read_documents(str(p))] == ["first", "second"]
  p.write_text(json.dumps({"text": "ok"}) + "\n{broken\n")
  with pytest.raises(ValueError, match=rf"{p}:2: not valid JSON"):
    data.read_documents(str(p))
  p.write_text(json.dumps({"body": "x"}) + "\n")
  with pytest.raises(ValueError, match=rf"{p}:1: expected an object with a string field 'text'"):
    data.read_documents(str(p))


def test_invalid_utf8_names_file_and_byte(tmp_path):
  p = tmp_path / "bad.txt"
  p.write_bytes(b"good text \xff\xfe more")
  with pytest.raises(ValueError, match=rf"{p}: invalid UTF-8 at byte 10"):
    data.read_documents(str(p))
  with pytest.raises(FileNotFoundError, match="matches no file"):
    data.read_documents(str(tmp_path / "nothing*.txt"))


def test_block_hash_changes_with_content(tok, tmp_path):
  (tmp_path / "a.txt").write_text("The cat sat on the mat.")
  blocks = data.make_blocks(data.read_documents(str(tmp_path / "a.txt")), tok, block_len=8)
  h = blocks.hash()
  blocks.tokens[0, 3] += 1
  assert blocks.hash() != h
