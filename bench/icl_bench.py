"""Multiple-choice option scoring: trajax vs transformers PyTorch the lm-evaluation-harness way.

  python bench/icl_bench.py                                  # sports_understanding, 100 examples
  python bench/icl_bench.py --task=hhh_alignment --max_examples=0

Both sides score the same 2-shot requests (prompts and tokens from
trajax.analysis.icl, built once and timed apart) with the same random OPT
weights (one HF checkpoint written to a temp dir):

* trajax: `scoring.score_options` with a jitted `Scorer` (rows sorted by length,
  padded to multiples of 64, batch `--batch_size`, fused chunked LM head).
  Reported cold (first pass, compiles included) and warm (second pass).
* harness: lm-evaluation-harness `HFLM._loglikelihood_tokens` semantics: one
  forward per (context, continuation) over `(context + continuation)[:-1]`,
  requests sorted by descending length, batches of `--hf_batch_size` right-padded
  to the batch's longest row (batch 1 = the harness default, no padding),
  full-vocab `log_softmax` in float32 and a gather of the continuation tokens.

The log-probs of both are compared (max abs difference of option sums). The
markdown table is printed with the date and machine.
"""
import argparse
import datetime
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def make_checkpoint(path, hidden, layers, heads, seed=0):
  import shutil

  import torch
  from transformers import OPTConfig, OPTForCausalLM
  torch.manual_seed(seed)
  cfg = OPTConfig(vocab_size=50272, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, ffn_dim=4 * hidden, max_position_embeddings=2048)
  model = OPTForCausalLM(cfg).eval()
  model.save_pretrained(path)
  shutil.copytree(os.path.join(SHARED, "tokenizer", "opt"), path, dirs_exist_ok=True)
  return model


def harness_scores(model, requests, batch_size: int, device: str) -> np.ndarray:
  """Summed continuation log-probs, lm-evaluation-harness style (see module doc).

  Args:
    model: transformers OPTForCausalLM (eval).
    requests: icl.OptionRequest list; context = tokens[:option_start].
    batch_size: rows per forward (1 = harness default).
    device: torch device.
  Returns:
    float64 [n] summed log-probs, aligned with `requests`.
  """
  import torch
  import torch.nn.functional as F
  out = np.zeros(len(requests), np.float64)
  order = sorted(range(len(requests)), key=lambda i: -len(requests[i].tokens))
  with torch.no_grad():
    for b in range(0, len(order), batch_size):
      rows = order[b:b + batch_size]
      inps = [torch.tensor(requests[i].tokens[:-1], dtype=torch.long) for i in rows]
      longest = max(len(x) for x in inps)
      batch = torch.stack([F.pad(x, (0, longest - len(x)), value=1) for x in inps]).to(device)
      mask = torch.stack([
          F.pad(torch.ones(len(x), dtype=torch.long), (0, longest - len(x))) for x in inps
      ]).to(device)
      logits = model(input_ids=batch, attention_mask=mask if batch_size > 1 else None).logits
      logp = F.log_softmax(logits.float(), dim=-1)
      for j, i in enumerate(rows):
        r = requests[i]
        cont = torch.tensor(r.tokens[r.option_start:], dtype=torch.long, device=device)
        lp = logp[j, r.option_start - 1:len(r.tokens) - 1].gather(-1, cont[:, None])
        out[i] = float(lp.double().sum())
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", default="sports_understanding")
  p.add_argument("--max_examples", type=int, default=100, help="0 = all examples")
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--batch_size", type=int, default=16, help="trajax rows per call")
  p.add_argument("--pad_to_multiple", default="64,16",
                 help="trajax length buckets to time, comma-separated (64 = the study's default)")
  p.add_argument("--hf_batch_sizes", default="1,16", help="harness batch sizes, comma-separated")
  args = p.parse_args()

  import jax
  import torch

  import trajax
  from trajax.analysis.icl import bigbench, prompts, scoring
  from trajax.scoring import Scorer

  torch.set_num_threads(os.cpu_count() or 1)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  tmp = tempfile.mkdtemp(prefix="icl_bench_")
  hf = make_checkpoint(tmp, args.hidden, args.layers, args.heads).to(device)
  tok = trajax.load_tokenizer(tmp)
  task = bigbench.load_task(os.path.join(SHARED, "bigbench", args.task))
  t0 = time.perf_counter()
  task_prompts = prompts.make_task_prompts(task, 2, 42, args.max_examples or None)
  reqs = prompts.build_requests(task_prompts, tok, max_length=2048)
  t_tok = time.perf_counter() - t0
  n = len(reqs)
  real_tokens = sum(len(r.tokens) for r in reqs)
  print(
      f"{args.task}: {len(task_prompts)} examples, {n} options, {real_tokens} tokens "
      f"(mean {real_tokens / n:.0f}/option); prompts+tokenisation {t_tok:.2f}s", flush=True)

  scorer = Scorer(trajax.load_hf(tmp))
  results = []
  for mult in (int(m) for m in args.pad_to_multiple.split(",") if m):
    kw = dict(batch_size=args.batch_size, max_length=2048, pad_to_multiple=mult)
    t0 = time.perf_counter()
    ours = scoring.score_options(reqs, scorer, **kw)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = scoring.score_options(reqs, scorer, **kw)
    warm = time.perf_counter() - t0
    name = f"trajax jit, batch {args.batch_size}, length bucket {mult}"
    results.append((f"{name}, cold (incl. compile)", cold, None))
    results.append((f"{name}, warm", warm, None))
    print(f"trajax bucket {mult}: cold {cold:.2f}s warm {warm:.2f}s", flush=True)
  for bs in (int(b) for b in args.hf_batch_sizes.split(",") if b):
    t0 = time.perf_counter()
    ref = harness_scores(hf, reqs, bs, device)
    dt = time.perf_counter() - t0
    diff = float(np.max(np.abs(ref - ours.logprob)))
    results.append((f"HF PyTorch harness-style, batch {bs}", dt, diff))
    print(f"harness batch {bs}: {dt:.2f}s, max |Δ option log-prob| {diff:.2e}", flush=True)

  ref_s = next(dt for name, dt, _ in results if "harness" in name)
  cpu = platform.processor() or platform.machine()
  print()
  print(
      f"ICL option scoring, {args.task} 2-shot, {len(task_prompts)} examples / {n} options / "
      f"{real_tokens} tokens; random OPT hidden {args.hidden}, {args.layers} layers, vocab 50272, "
      f"float32")
  print(
      f"{datetime.date.today().isoformat()}, {platform.node()} ({cpu}, {os.cpu_count()} cores), "
      f"JAX {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} on {device}"
  )
  print()
  print("| scorer | seconds | options/s | speed vs HF batch 1 | max abs Δ log-prob vs trajax |")
  print("|---|---:|---:|---:|---:|")
  for name, dt, diff in results:
    print(f"| {name} | {dt:.2f} | {n / dt:.1f} | {ref_s / dt:.2f}x | "
          f"{'-' if diff is None else f'{diff:.1e}'} |")


if __name__ == "__main__":
  main()
