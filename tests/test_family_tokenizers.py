"""Token blocks start exactly as each family's own tokenizer encodes a text.

Each test builds a small BPE tokenizer with the `tokenizers` library, wraps it in
the family's transformers tokenizer class with that family's special tokens (as
the released tokenizer_config.json files set them; written here from the hub
files, not re-read offline), saves it to a checkpoint-like directory and loads it
the way trajax does (`checkpoints.load_tokenizer`: AutoTokenizer, tokenizer.json).
  * Llama (Llama 2, TinyLlama, Amber): LlamaTokenizer, `add_bos_token` true: `<s>` first.
  * OLMo-1 (`OLMo-*-hf`): GPTNeoXTokenizer, no BOS token: the text's first token first.
  * OLMo-2: GPT2Tokenizer with bos = eos = `<|endoftext|>` but `add_bos_token` false:
    the tokenizer adds nothing, so neither does trajax (the old rule, "prepend
    bos_token_id whenever there is one", would have added `<|endoftext|>`).
  * GPT-NeoX / Pythia: GPTNeoXTokenizer, bos `<|endoftext|>`, not added.
"""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from trajax import checkpoints, data

CORPUS = [
    "The river runs past the old mill, and the miller sings to the fish. " * 8,
    "Quiet water turns the wheel; flour dusts the stones."
]
DOCS = [
    data.Document("a", "The miller sings to the river and the wheel turns."),
    data.Document("b", "Flour dusts the old stones of the mill. " * 6)
]


def _bpe(specials, metaspace=False):
  """(vocab, merges) of a small BPE trained on CORPUS, specials first."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = (pre_tokenizers.Metaspace() if metaspace else pre_tokenizers.ByteLevel(
      add_prefix_space=False))
  alphabet = [] if metaspace else pre_tokenizers.ByteLevel.alphabet()
  tok.train_from_iterator(
      CORPUS, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=alphabet))
  merges = json.loads(tok.to_str())["model"]["merges"]
  return tok.get_vocab(), [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def _llama(path):
  from transformers import LlamaTokenizer
  vocab, merges = _bpe(["<unk>", "<s>", "</s>"], metaspace=True)
  LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True).save_pretrained(path)
  return 1  # <s>


def _olmo(path):
  from transformers import GPTNeoXTokenizer
  vocab, merges = _bpe(["<|endoftext|>", "<|padding|>"])
  GPTNeoXTokenizer(vocab=vocab, merges=merges, bos_token=None, eos_token="<|endoftext|>",
                   pad_token="<|padding|>", add_bos_token=False).save_pretrained(path)
  return None


def _olmo2(path):
  from transformers import GPT2Tokenizer
  vocab, merges = _bpe(["<|endoftext|>", "<|pad|>"])
  GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                pad_token="<|pad|>", add_bos_token=False).save_pretrained(path)
  return None


def _neox(path):
  from transformers import GPTNeoXTokenizer
  vocab, merges = _bpe(["<|endoftext|>", "<|padding|>"])
  GPTNeoXTokenizer(vocab=vocab, merges=merges, bos_token="<|endoftext|>",
                   eos_token="<|endoftext|>").save_pretrained(path)
  return None


FAMILIES = {"llama": _llama, "olmo": _olmo, "olmo2": _olmo2, "gpt_neox": _neox}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_blocks_start_as_the_family_tokenizer_encodes(tmp_path, family):
  want_bos = FAMILIES[family](tmp_path)
  tok = checkpoints.load_tokenizer(tmp_path)
  blocks = data.make_blocks(DOCS, tok, block_len=16, max_docs=None)
  for row, doc in enumerate(DOCS):
    encoded = tok(doc.text)["input_ids"][:16]
    assert tok.unk_token_id not in encoded and len(set(encoded)) > 5  # a real encoding
    assert blocks.tokens[row][blocks.mask[row]].tolist() == encoded
    body = tok(doc.text, add_special_tokens=False)["input_ids"]
    first = blocks.tokens[row, 0]
    assert first == (want_bos if want_bos is not None else body[0])
  if family == "olmo2":  # a BOS token is named but the tokenizer does not add it
    assert tok.bos_token_id is not None and blocks.tokens[0, 0] != tok.bos_token_id
  assert data.special_prefix(tok) == ([] if want_bos is None else [want_bos])


def test_explicit_bos_overrides_the_tokenizer(tmp_path):
  _olmo2(tmp_path)
  tok = checkpoints.load_tokenizer(tmp_path)
  eos = tok.eos_token_id
  blocks = data.make_blocks(DOCS, tok, block_len=8, max_docs=None, bos_id=eos)
  np.testing.assert_array_equal(blocks.tokens[:, 0], eos)
  body = tok(DOCS[1].text, add_special_tokens=False)["input_ids"][:7]
  assert blocks.tokens[1, 1:].tolist() == body
