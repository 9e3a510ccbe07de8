"""Texts decoded by one family, scored by another (paper Fig. 7: OPT texts, GPT-Neo scores).

The paper checks that texts decoded with OPT 125M and 30B shift the same way
under "final GPT Neo checkpoints (Black et al., 2021), which were trained on the
Pile" (§4.3). Another family has another tokenizer, so a text is carried over as
characters: its prompt and continuation are decoded by the decoding tokenizer
(special tokens dropped: OPT's BOS and EOS are not text), joined, and encoded
by the other family's tokenizer as that family encodes any text
(`data.special_prefix`: nothing for GPT-Neo, `<s>` for Llama). The continuation
is every token that holds a character of the generated text (a token spanning
the prompt's end counts as continuation); its perplexity is exp of the mean NLL
over those tokens, pooled per (config, method), as `generation.score_texts`
does for the decoding family. Token counts differ between tokenizers, so the
numbers compare models within the other family, never across families.
"""
from __future__ import annotations

from typing import Callable, Sequence

from trajax import data, stream, trajectory
from trajax.analysis import generation


def _prefix_len(a: str, b: str) -> int:
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  return n


def retokenize(texts: Sequence[dict], src_tokenizer, dst_tokenizer) -> list[dict]:
  """The texts in `dst_tokenizer`'s ids, split where the generated characters start.

  Args:
    texts: records with prompt_ids and generated_ids in `src_tokenizer`'s ids.
    src_tokenizer: the tokenizer the texts were decoded with.
    dst_tokenizer: the other family's tokenizer (a fast one: it reports offsets).
  Returns:
    Copies of the records whose prompt_ids ([the other family's special prefix] +
    the tokens before the first one holding a generated character) and
    generated_ids (the rest) are `dst_tokenizer`'s; "text" holds the joined
    characters and "boundary" the index where the generated ones start.
  """
  if not getattr(dst_tokenizer, "is_fast", False):
    raise ValueError(f"cross-family scoring needs a fast tokenizer (character offsets); "
                     f"{type(dst_tokenizer).__name__} is not one (its directory needs a "
                     f"tokenizer.json)")
  prefix = data.special_prefix(dst_tokenizer)
  out = []
  for t in texts:
    prompt = src_tokenizer.decode(t["prompt_ids"], skip_special_tokens=True)
    full = src_tokenizer.decode(
        list(t["prompt_ids"]) + list(t["generated_ids"]), skip_special_tokens=True)
    boundary = _prefix_len(prompt, full)  # = len(prompt) unless a character spans the join
    enc = dst_tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    k = next((i for i, (_, end) in enumerate(offsets) if end > boundary), len(ids))
    if not prefix and k == 0:  # the first token has no context to be predicted from
      k = min(1, len(ids))
    out.append(
        dict(t, prompt_ids=prefix + ids[:k], generated_ids=ids[k:], text=full, boundary=boundary))
  return out


def score(texts: Sequence[dict], src_tokenizer, other: trajectory.Trajectory, dst_tokenizer,
          order: Sequence[str], *, all_checkpoints: bool = False,
          checkpoint_stream: stream.CheckpointStream | None = None, batch_size: int = 8,
          done: set | None = None, on_rows: Callable[[list[dict]], None] | None = None,
          log: Callable[[str], None] | None = None) -> list[dict]:
  """Perplexity of the continuations under another family's checkpoints (Fig. 7).

  Args:
    texts: `generation.generate_texts` records (the decoding family's ids).
    src_tokenizer: the decoding tokenizer.
    other: the other family's manifest.
    dst_tokenizer: the other family's tokenizer.
    order: its model names, smallest first.
    all_checkpoints: every checkpoint (a trajectory), or only each model's final one (Fig. 7).
    checkpoint_stream, batch_size, done, on_rows, log: as `generation.score_texts`.
  Returns:
    Rows {model, step, config, method, ppl, n_texts, n_tokens} (`generation.PPL_FIELDS`).
  """
  carried = retokenize(texts, src_tokenizer, dst_tokenizer)
  ckpts = {}
  for name in order:
    m = other.model(name)
    ckpts[name] = [
        (c.step, c.path) for c in (m.checkpoints if all_checkpoints else m.checkpoints[-1:])
    ]
  return generation.score_texts(carried, ckpts, checkpoint_stream=checkpoint_stream,
                                batch_size=batch_size, done=done, on_rows=on_rows, log=log)
