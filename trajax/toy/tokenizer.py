"""A byte-level BPE tokenizer trained on the toy corpus that loads and behaves like OPT's."""
from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable

# With 480 people a 2048 vocabulary turns half the names into single tokens (they
# are as frequent as the common words); at 1536 a name is ~3 tokens and every
# common word is still one, so names give the easy "continue the word" tokens.
DEFAULT_VOCAB_SIZE = 1536
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as OPT (fairseq order)

# OPT's own tokenizer_config/special_tokens_map values (bos = eos = unk = "</s>").
_TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "errors": "replace",
    "bos_token": "</s>",
    "eos_token": "</s>",
    "unk_token": "</s>",
    "pad_token": "<pad>",
    "add_prefix_space": False,
    "add_bos_token": True,
    "model_max_length": 2048,
    "padding_side": "right",
    "clean_up_tokenization_spaces": False,
}
_SPECIAL_TOKENS_MAP = {
    "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>"
}


def train_tokenizer(texts: Iterable[str], vocab_size: int,
                    out_dir: str | os.PathLike) -> pathlib.Path:
  """Trains a byte-level BPE tokenizer that loads and behaves like OPT's.

  `transformers.AutoTokenizer.from_pretrained(out_dir)` gives `<s>`=0, `<pad>`=1,
  `</s>`=2, `<unk>`=3, prepends BOS `</s>` when encoding, pads right with 1, and
  decode(encode(text)) == text for any text (byte-level: no unknown tokens).

  Args:
    texts: training documents.
    vocab_size: total vocabulary including the 4 special tokens and the 256
      byte tokens (> 260). The result is smaller if the texts run out of merges.
  Returns:
    out_dir, holding tokenizer.json, tokenizer_config.json, special_tokens_map.json,
    vocab.json and merges.txt.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

  if vocab_size <= 256 + len(SPECIAL_TOKENS):
    raise ValueError(f"train_tokenizer: vocab_size must exceed 260 (256 bytes + 4 "
                     f"special tokens), got {vocab_size}")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  bos = SPECIAL_TOKENS.index("</s>")
  if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != [0, 1, 2, 3]:
    raise RuntimeError(f"train_tokenizer: special tokens got ids "
                       f"{[tok.token_to_id(t) for t in SPECIAL_TOKENS]}, expected 0..3")
  # As OPT's: "</s> A" for one text, "</s> A </s> B" for a pair.
  tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s>:1 $B:1",
                                                     special_tokens=[("</s>", bos)])
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tok.save(str(out / "tokenizer.json"))
  tok.model.save(str(out))  # vocab.json + merges.txt, for readers without tokenizer.json
  for name, content in (("tokenizer_config.json", _TOKENIZER_CONFIG), ("special_tokens_map.json",
                                                                       _SPECIAL_TOKENS_MAP)):
    (out / name).write_text(json.dumps(content, indent=2) + "\n")
  return out
