"""Documents -> token blocks: the first N tokens of each document.

The paper (App. B.1) takes 50 PG-19 validation documents and the first 2048
tokens of each: 50 x 2047 = 102,350 context-token pairs. A block starts as the
family's own tokenizer starts an encoded text (`special_prefix`): OPT's `</s>`,
Llama's `<s>`, nothing for GPT-NeoX/Pythia and OLMo; then the document's first
tokens, so a full block yields `block_len - 1` predictions, as the paper counts.
Shorter documents are right-padded and masked (or skipped, if asked).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os

import numpy as np

GUTENBERG_START = "*** START OF"
GUTENBERG_END = ("*** END OF", "End of the Project Gutenberg", "End of Project Gutenberg")
BOM = "\ufeff"


@dataclasses.dataclass
class Document:
  name: str
  text: str


def _decode(raw: bytes, where: str, offset: int = 0) -> str:
  """`raw` as UTF-8 text; errors name `where` and the byte (`offset` is `raw`'s in the file)."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{where}: invalid UTF-8 at byte {offset + e.start} "
                     f"({raw[e.start:e.start + 4]!r}); expected UTF-8 text") from None
  if "\x00" in text:
    raise ValueError(f"{where}: contains NUL bytes at character {text.index(chr(0))}; expected "
                     f"a text file")
  return text


def strip_gutenberg(text: str) -> str:
  """The body of a Project Gutenberg release, between its START and END markers."""
  start = text.find(GUTENBERG_START)
  if start >= 0:
    line_end = text.find("\n", start)
    text = "" if line_end < 0 else text[line_end + 1:]  # the START line is never body
  ends = [i for i in (text.find(m) for m in GUTENBERG_END) if i >= 0]
  if ends:
    text = text[:min(ends)]
  return text.strip()


def read_documents(patterns: str | list[str], text_key: str = "text", gutenberg: bool = False,
                   log=None) -> list[Document]:
  """Reads `.txt` files (one document each) and `.jsonl` files (one per line).

  Args:
    patterns: glob pattern(s), comma-separated in a string; sorted for a fixed order.
    text_key: the JSONL field holding the text.
    gutenberg: strip Project Gutenberg headers/footers from .txt files.
    log: optional callable for a message about skipped (empty) documents.
  Returns:
    The non-empty documents; a file that is not UTF-8 text, or a JSONL line that
    is not an object with a string `text_key`, is a ValueError naming the file
    (and `file:line` in JSONL).
  """
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(",") if p]
  paths = []
  for pattern in patterns:
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
      raise FileNotFoundError(f"data pattern {pattern!r} matches no file")
    paths += found
  docs, skipped = [], 0
  for path in paths:
    with open(path, "rb") as f:
      raw = f.read()
    if path.endswith(".jsonl"):
      found = list(_jsonl_documents(raw, path, text_key))
      docs += [d for d in found if d is not None]
      skipped += found.count(None)
    else:
      text = _decode(raw, path).removeprefix(BOM).replace("\r\n", "\n")  # one BOM; CRLF ends
      text = strip_gutenberg(text) if gutenberg else text
      if text.strip():
        docs.append(Document(path, text))
      else:
        skipped += 1
  if skipped and log:
    log(f"skipped {skipped} empty document(s)")
  return docs


def jsonl_objects(raw: bytes, path: str):
  """(`path:line`, object) per non-blank line of JSONL bytes (a leading BOM is skipped).

  A damaged line (invalid UTF-8, NUL bytes, invalid JSON, not an object) is a
  ValueError naming `path:line`; byte offsets in errors are the file's.
  """
  body = raw.removeprefix(BOM.encode())
  offset = len(raw) - len(body)
  for lineno, line in enumerate(body.split(b"\n"), 1):
    where = f"{path}:{lineno}"
    text = _decode(line, where, offset)
    offset += len(line) + 1
    if not text.strip():
      continue
    try:
      obj = json.loads(text)
    except (ValueError, RecursionError) as e:  # also too-long integers, too-deep nesting
      raise ValueError(f"{where}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(obj, dict):
      raise ValueError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    yield where, obj


def _jsonl_documents(raw: bytes, path: str, text_key: str):
  """A Document (None for an empty one) per non-blank line; errors name `path:line`."""
  for where, obj in jsonl_objects(raw, path):
    if not isinstance(obj.get(text_key), str):
      raise ValueError(f"{where}: expected an object with a string field {text_key!r}")
    doc = obj[text_key]
    try:
      doc.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can escape a lone surrogate; no tokenizer takes it
      raise ValueError(f"{where}: field {text_key!r} has an unpaired surrogate "
                       f"{doc[e.start]!r} at character {e.start}; expected Unicode text") from None
    yield Document(where, doc) if doc.strip() else None


def encode_prefix(tokenizer, text: str, n_tokens: int) -> list[int]:
  """The first `n_tokens` ids of `text` (no special tokens), encoding only a prefix.

  Books are long; tokenising a character prefix avoids encoding megabytes. A
  prefix may end inside a word whose tokens then differ from the whole text's
  (BPE merges depend on the whole word: "communication" vs a cut "commun"), and
  more than one token can differ. So the prefix grows until the first
  `n_tokens` ids of two prefixes, one twice the other, agree (or it is the
  whole text).
  """
  chars = max(64, n_tokens * 8)
  previous = None
  while True:
    ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
    if chars >= len(text) or (previous is not None and previous[:n_tokens] == ids[:n_tokens]):
      return ids[:n_tokens]
    previous = ids if len(ids) > n_tokens else None
    chars *= 2


@dataclasses.dataclass
class Blocks:
  """Token blocks [rows, block_len] with their mask and provenance."""
  tokens: np.ndarray  # [rows, block_len] int32
  mask: np.ndarray  # [rows, block_len] bool
  names: list[str]

  @property
  def n_predictions(self) -> int:
    return int((self.mask[:, 1:] & self.mask[:, :-1]).sum())

  def hash(self) -> str:
    h = hashlib.sha256()
    h.update(str(self.tokens.shape).encode())
    h.update(np.ascontiguousarray(self.tokens, np.int32).tobytes())
    h.update(np.ascontiguousarray(self.mask).tobytes())
    return h.hexdigest()


# Encoded with and without special tokens to see what a tokenizer adds before a text.
_PROBE = "Probe text, 12 tokens or so."


def special_prefix(tokenizer) -> list[int]:
  """The ids `tokenizer(text)` puts before the text's own tokens.

  This is each family's BOS convention as its own tokenizer applies it: Llama's
  `<s>` (add_bos_token), OPT's `</s>`; nothing for GPT-NeoX/Pythia and OLMo,
  whose tokenizers add no BOS even where one is named. Suffixes (an EOS some
  tokenizers append) are not part of a block: blocks are a document's first tokens.
  """
  with_ids = list(tokenizer(_PROBE)["input_ids"])
  text_ids = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
  for k in range(len(with_ids) - len(text_ids) + 1):
    if with_ids[k:k + len(text_ids)] == text_ids:
      return with_ids[:k]
  raise ValueError(f"tokenizer {type(tokenizer).__name__}: encoding {_PROBE!r} with special "
                   f"tokens ({with_ids}) does not contain its encoding without them ({text_ids}); "
                   f"pass bos_id explicitly")


def make_blocks(docs: list[Document], tokenizer, block_len: int = 2048, max_docs: int | None = 50,
                bos_id: int | None = None, min_tokens: int = 2, pad_id: int = 1) -> Blocks:
  """The first `block_len` tokens ([BOS] + text) of each document, right-padded.

  Args:
    docs: documents in order; the first `max_docs` usable ones are taken.
    tokenizer: an HF tokenizer.
    block_len: tokens per block including BOS.
    bos_id: id to prepend; default (None) whatever the tokenizer itself puts before
      a text (`special_prefix`: OPT's `</s>` = 2, Llama's `<s>` = 1, nothing for
      GPT-NeoX/Pythia and OLMo), so a block starts as `tokenizer(text)` does;
      pass -1 for none.
    min_tokens: documents with fewer tokens than this (after BOS) are skipped.
  """
  if block_len < 2:
    raise ValueError(f"block_len must be >= 2, got {block_len}")
  if max_docs is not None and max_docs < 1:
    raise ValueError(f"max_docs must be None (all) or >= 1, got {max_docs}")
  if bos_id is None:
    prefix = special_prefix(tokenizer)
  else:
    prefix = [] if bos_id < 0 else [int(bos_id)]
  rows, names = [], []
  for doc in docs:
    if max_docs is not None and len(rows) >= max_docs:
      break
    ids = prefix + encode_prefix(tokenizer, doc.text, block_len - len(prefix))
    if len(ids) < min_tokens:
      continue
    rows.append(ids)
    names.append(doc.name)
  if not rows:
    raise ValueError(f"no document yields at least {min_tokens} tokens")
  tokens = np.full((len(rows), block_len), pad_id, np.int32)
  mask = np.zeros((len(rows), block_len), bool)
  for i, ids in enumerate(rows):
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = True
  return Blocks(tokens, mask, names)


def tokenizer_hash(tokenizer) -> str:
  """A hash of the tokenizer's vocabulary and special tokens."""
  h = hashlib.sha256()
  h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
  h.update(
      json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]).encode())
  return h.hexdigest()
