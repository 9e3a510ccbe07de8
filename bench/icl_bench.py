"""ICL option scoring: trajax vs lm-evaluation-harness and a harness-style PyTorch loop.

  python bench/icl_bench.py                         # CPU, OPT-125m shape, float32
  python bench/icl_bench.py --shape=1.3b --dtype=bfloat16   # a GPU host
  python bench/icl_bench.py --calibrate --repeats=2       # cost-model weights

Every side scores the same 2-shot requests of real BIG-bench tasks (prompts and
tokens from `trajax.analysis.icl`, `--max_examples` per task, their real lengths)
with the same random OPT weights (`save_pretrained` into a temp dir):

* trajax: `engine.OptionScorer` with the plan it chooses (`--method=auto`: prefix
  trees, prefix reuse or packing per example by the cost model, batches sized by
  trajax; or one method for every example). Cold = first pass, compilation included;
  warm = later passes (what every further checkpoint of the architecture costs).
* lm-eval: EleutherAI lm-evaluation-harness `HFLM.loglikelihood` on the (context,
  continuation) strings, batch `--hf_batch_size`, run by `bench/lmeval_side.py` in a
  separate venv (`--lmeval_python`; it is not a trajax dependency). Its tokens are
  checked against trajax's; the pairs are also scored from trajax's token ids.
* harness-style loop: transformers PyTorch as lm-eval does it (one forward per
  option over `(context + continuation)[:-1]`, sorted by length, right-padded
  batches of `--hf_batch_size`, full-vocab log_softmax + gather), in this process.

Runs alternate (trajax, loop, lm-eval) `--repeats` times; the table reports medians
and the max |Δ| of per-option log-likelihoods against trajax.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
# Five tasks drawn once, before any timing: sorted(np.random.RandomState(0).choice(74 tasks, 5)).
TASKS = ("fantasy_reasoning", "identify_odd_metaphor", "misconceptions_russian", "persian_idioms",
         "presuppositions_as_nli")
SHAPES = {  # hidden, layers, heads
    "125m": (768, 12, 12), "1.3b": (2048, 24, 32), "tiny": (64, 2, 4)
}


def make_checkpoint(path, shape, seed=0):
  import torch
  from transformers import OPTConfig, OPTForCausalLM
  hidden, layers, heads = SHAPES[shape]
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
    requests: OptionRequest list; context = tokens[:option_start].
    batch_size: rows per forward.
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


def lmeval_run(python, ckpt, requests, texts, batch_size, device, dtype, tmp):
  """One lm-eval loglikelihood pass in the bench venv; returns its OUT.json dict."""
  pairs = [[
      texts[i][0], texts[i][1], r.tokens[:r.option_start].tolist(),
      r.tokens[r.option_start:].tolist()
  ] for i, r in enumerate(requests)]
  src, dst = os.path.join(tmp, "lmeval_in.json"), os.path.join(tmp, "lmeval_out.json")
  with open(src, "w") as f:
    json.dump(
        {"model": ckpt, "batch_size": batch_size, "device": device, "dtype": dtype, "pairs": pairs},
        f)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  proc = subprocess.run([python, os.path.join(ROOT, "bench", "lmeval_side.py"), src, dst],
                        capture_output=True, text=True, env=env)
  if proc.returncode:
    raise RuntimeError(f"lm-eval side failed:\n{proc.stderr[-3000:]}")
  with open(dst) as f:
    return json.load(f)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tasks", default=",".join(TASKS))
  p.add_argument("--max_examples", type=int, default=6, help="per task; 0 = all")
  p.add_argument("--shape", default="125m", choices=sorted(SHAPES))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--hf_batch_size", type=int, default=16)
  p.add_argument("--lmeval_python", default="/work/venv-lmeval/bin/python",
                 help="python of a venv with lm-eval installed; '' = skip lm-eval")
  p.add_argument("--method", default="auto", choices=("auto", "reuse", "tree", "pack"),
                 help="trajax's OptionScorer method (auto: chosen per example by the cost model)")
  p.add_argument("--calibrate", action="store_true",
                 help="only measure the cost-model weights (engine.calibrate) and print them")
  args = p.parse_args()

  import jax
  import torch

  import trajax
  from trajax.analysis.icl import bigbench, engine, prompts
  from trajax.scoring import Scorer

  torch.set_num_threads(os.cpu_count() or 1)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  tmp = tempfile.mkdtemp(prefix="icl_bench_")
  ckpt = os.path.join(tmp, "ckpt")
  hf = make_checkpoint(ckpt, args.shape)
  if args.dtype == "bfloat16":
    hf = hf.to(torch.bfloat16)
  hf = hf.to(device)
  tok = trajax.load_tokenizer(ckpt)
  reqs, texts = [], []
  t0 = time.perf_counter()
  for name in args.tasks.split(","):
    ps = prompts.make_task_prompts(bigbench.load_task(os.path.join(SHARED, "bigbench", name)), 2,
                                   42, args.max_examples or None)
    rs = prompts.build_requests(ps, tok, max_length=2048)
    by_key = {(q.task, q.example_index): q for q in ps}
    texts += [
        (by_key[(r.task, r.example_index)].text[r.prompt_chars_dropped:], r.option) for r in rs
    ]
    reqs += rs
  t_tok = time.perf_counter() - t0
  n = len(reqs)
  row_tokens = sum(len(r.tokens) for r in reqs)
  print(f"{args.tasks}: {n} options, {row_tokens} row tokens; prompts+tokenisation {t_tok:.1f}s",
        flush=True)

  dtype = {"float32": None, "bfloat16": "bfloat16"}[args.dtype]
  import jax.numpy as jnp
  model = trajax.load_hf(ckpt, dtype=jnp.bfloat16) if dtype else trajax.load_hf(ckpt)
  option_scorer = engine.OptionScorer(Scorer(model), args.method)
  if args.calibrate:  # measure, print and stop: the numbers go into plan.CALIBRATION
    w = engine.calibrate(option_scorer, reqs, repeats=max(args.repeats, 1))
    print(f"calibrated weights on {jax.default_backend()}: {w}", flush=True)
    return
  t0 = time.perf_counter()
  ours = option_scorer.score(reqs).logprob
  cold = time.perf_counter() - t0
  stats = dict(option_scorer.stats)
  print(f"trajax cold {cold:.1f}s; plan {stats}", flush=True)
  times = {"trajax": [], "loop": [], "lmeval": []}
  diffs = {}
  lm_info = None
  use_lmeval = bool(args.lmeval_python) and os.path.exists(args.lmeval_python)
  for rep in range(args.repeats):
    t0 = time.perf_counter()
    again = option_scorer.score(reqs).logprob
    times["trajax"].append(time.perf_counter() - t0)
    diffs["trajax_rerun"] = float(np.max(np.abs(again - ours)))
    t0 = time.perf_counter()
    ref = harness_scores(hf, reqs, args.hf_batch_size, device)
    times["loop"].append(time.perf_counter() - t0)
    diffs["loop"] = float(np.max(np.abs(ref - ours)))
    if use_lmeval:
      lm_info = lmeval_run(args.lmeval_python, ckpt, reqs, texts, args.hf_batch_size, device,
                           args.dtype, tmp)
      times["lmeval"].append(lm_info["seconds"])
      same = np.array(lm_info["tokens_equal"])
      ll = np.array(lm_info["loglik"])
      diffs["lmeval"] = float(np.max(np.abs(ll[same] - ours[same]))) if same.any() else None
      diffs["lmeval_tokens"] = float(np.max(np.abs(np.array(lm_info["loglik_tokens"]) - ours)))
    print(
        f"repeat {rep}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items() if v) +
        f" | load {os.getloadavg()[0]:.1f}", flush=True)

  med = {k: float(np.median(v)) for k, v in times.items() if v}
  cpu = platform.processor() or platform.machine()
  print()
  print(f"ICL option scoring, 2-shot, tasks {args.tasks} ({args.max_examples or 'all'} examples "
        f"each): {n} options / {row_tokens} row tokens; random OPT {args.shape} shape "
        f"(hidden/layers/heads {SHAPES[args.shape]}, vocab 50272), {args.dtype}")
  print(f"{datetime.datetime.now().isoformat(timespec='minutes')}, {platform.node()} ({cpu}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()}), JAX {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__} on {device}" +
        (f", lm-eval {lm_info['lm_eval_version']} (torch {lm_info['torch_version']}, "
         f"{lm_info['threads']} threads)" if lm_info else ""))
  print(f"trajax plan ({args.method}): {stats['reuse_calls']} reuse + {stats['tree_calls']} tree "
        f"+ {stats['pack_calls']} pack calls, {stats['shapes']} shapes; {stats['slots']} token "
        f"slots computed for {row_tokens} row tokens; prefill {stats['prefill_real']}/"
        f"{stats['prefill']} real, option rows {stats['option_real']}/{stats['option']}, tree "
        f"rows {stats['tree_real']}/{stats['tree']}, packed {stats['pack_real']}/{stats['pack']}")
  if lm_info:
    same = np.array(lm_info["tokens_equal"])
    print(f"lm-eval tokenised {int(same.sum())}/{n} pairs exactly as trajax; max |Δ| there "
          f"{diffs['lmeval']}; from trajax's token ids, all {n}: {diffs['lmeval_tokens']:.1e}")
  print()
  print(f"| scorer | median s ({args.repeats} runs) | options/s | s / trajax warm s | "
        f"max abs Δ log-lik vs trajax |")
  print("|---|---:|---:|---:|---:|")
  rows = [("trajax, cold (compiles included)", cold, "-"), ("trajax, warm", med["trajax"], "-"),
          (f"harness-style PyTorch loop, batch {args.hf_batch_size}", med["loop"],
           f"{diffs['loop']:.1e}")]
  if "lmeval" in med:
    rows.append((f"lm-eval HFLM.loglikelihood, batch {args.hf_batch_size}", med["lmeval"],
                 f"{diffs['lmeval_tokens']:.1e}"))
  for name, s, d in rows:
    print(f"| {name} | {s:.1f} | {n / s:.2f} | {s / med['trajax']:.2f}x | {d} |")


if __name__ == "__main__":
  main()
