"""Per-token scoring throughput and memory: trajax vs transformers PyTorch, side by side.

  python bench/score_cpu.py                      # OPT-125m shape, float32, CPU
  python bench/score_cpu.py --shape=small        # a quick run

Both score the same random weights (one HF checkpoint written to a temp dir)
on the same token ids; torch computes log_softmax over the full logits and
gathers (what a researcher would write), trajax runs its fused chunked kernel.
After one warm-up call each, the two sides alternate for `--rounds` rounds (torch,
trajax, torch, ...) so both see the same machine load; the ratio reported is the
median over rounds of torch time / trajax time, and the load average is printed.
Peak memory is measured in fresh subprocesses (ru_maxrss) for batch 8 x 2048
with vocab 50272.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import SHAPES, make_checkpoint  # noqa: E402

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def alternate(fns, rounds, clock="wall"):
  """Per-call seconds of each of `fns` over `rounds` rounds run one after another.

  `clock="process"` counts this process's CPU time (all its threads) instead of wall time:
  with one thread per side (see `main`) it measures work per call, which other jobs on a
  shared machine disturb far less than wall time.
  """
  now = CLOCKS[clock]
  for fn in fns:
    fn()  # warm-up / compile
  times = [[] for _ in fns]
  for _ in range(rounds):
    for fn, out in zip(fns, times):
      t0 = now()
      fn()
      out.append(now() - t0)
  return [np.array(t) for t in times]


def baseline_scorer(scorer):
  """Scores as trajax did before issue 16 (commit 148a6db): the blockwise causal kernel of
  that time (whole batch per tile, 256-token tiles, every tile masked), the head in
  128-token chunks over the whole vocabulary, XLA's default CPU options."""
  import jax.numpy as jnp
  from bench.attention_cpu import old_flash
  from trajax import scoring
  from trajax.models import layers

  def score(ids):
    tokens = jnp.asarray(ids, jnp.int32)
    segments = jnp.ones(ids.shape, jnp.int32)
    saved = layers.causal_flash
    layers.causal_flash = lambda q, k, v, seg, block: old_flash(q, k, v, seg, 256)
    try:  # the patch matters while tracing only: static args (128, 0) compile once
      return np.asarray(
          scoring._score.plain(scorer.graphdef, scorer.state, tokens, segments, 128, 0))
    finally:
      layers.causal_flash = saved

  return score


def throughput(path, batch, length, rounds, clock="wall", baseline=False):
  """Per-call seconds [rounds] of (trajax, torch, baseline or None) and the max |Δ log-prob|."""
  import torch
  from transformers import OPTForCausalLM
  import trajax
  ids = np.random.RandomState(0).randint(3, 50265, size=(batch, length))
  ref = OPTForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
  tids = torch.tensor(ids)

  def torch_score():
    with torch.inference_mode():
      logits = ref(input_ids=tids).logits.float()
      return torch.log_softmax(logits, -1)[:, :-1].gather(-1, tids[:, 1:, None])[..., 0]

  scorer = trajax.Scorer(trajax.load_hf(path))

  def jax_score():
    return scorer(ids)

  a, b = jax_score()[:, 1:], torch_score().numpy()
  max_diff = float(np.max(np.abs(a - b)))
  fns = [torch_score, jax_score]
  if baseline:
    base = baseline_scorer(scorer)
    max_diff = max(max_diff, float(np.max(np.abs(base(ids)[:, 1:] - b))))
    fns.append(lambda: base(ids))
  times = alternate(fns, rounds, clock)
  return times[1], times[0], (times[2] if baseline else None), max_diff


def peak_memory(which, path):
  """Peak RSS (MiB, VmHWM) of a fresh process scoring 8 x 2048 tokens."""
  code = f"""
import sys, numpy as np
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
ids = np.random.RandomState(0).randint(3, 50265, size=(8, 2048))
if {which!r} == "trajax":
  import trajax
  out = trajax.Scorer(trajax.load_hf({path!r}))(ids)
else:
  import torch
  from transformers import OPTForCausalLM
  m = OPTForCausalLM.from_pretrained({path!r}, attn_implementation="sdpa").eval()
  t = torch.tensor(ids)
  with torch.inference_mode():
    out = torch.log_softmax(m(input_ids=t).logits.float(), -1)[:, :-1].gather(-1, t[:, 1:, None])
# VmHWM is this process's own peak; ru_maxrss would inherit the parent's at exec.
print([int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024)
"""
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return float(res.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shape", default="125m", choices=sorted(SHAPES))
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--length", type=int, default=1024)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--skip_memory", action="store_true")
  p.add_argument(
      "--clock", default="wall", choices=sorted(CLOCKS),
      help="process: CPU time; run as XLA_FLAGS=--xla_cpu_multi_thread_eigen=false "
      "taskset -c 1 ... --torch_threads=1 for one thread per side")
  p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
  p.add_argument("--baseline", action="store_true",
                 help="also time trajax as of commit 148a6db, in the same rounds")
  args = p.parse_args()
  import jax
  import torch
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, args.shape)
    make_checkpoint(args.shape, path)
    load_before = os.getloadavg()[0]
    t_jax, t_torch, t_base, diff = throughput(path, args.batch, args.length, args.rounds,
                                              args.clock, args.baseline)
    tokens = args.batch * args.length
    print(f"# score_cpu {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | "
          f"{platform.machine()} {os.cpu_count()} CPU(s) | jax {jax.__version__} "
          f"({jax.default_backend()}) | torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads) | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} | CPUs usable "
          f"{len(os.sched_getaffinity(0))} | load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print(
        f"shape OPT-{args.shape} float32, vocab 50272, batch {args.batch} x {args.length} tokens, "
        f"{args.rounds} alternating rounds, {args.clock} clock; max |logprob diff| {diff:.2e}")
    print("round s: torch " + " ".join(f"{x:.3f}" for x in t_torch) + " | trajax " +
          " ".join(f"{x:.3f}" for x in t_jax) + " | ratio " +
          " ".join(f"{x:.2f}" for x in t_torch / t_jax))
    med_torch, med_jax = float(np.median(t_torch)), float(np.median(t_jax))
    print("| impl | s/batch (median) | tokens/s | ratio vs torch (median of rounds) |")
    print("|---|---|---|---|")
    print(f"| transformers PyTorch (sdpa, full log_softmax) | {med_torch:.3f} | "
          f"{tokens / med_torch:,.0f} | 1.00x |")
    print(f"| trajax (jit, fused chunked head) | {med_jax:.3f} | {tokens / med_jax:,.0f} | "
          f"{float(np.median(t_torch / t_jax)):.2f}x |")
    if t_base is not None:
      med_base = float(np.median(t_base))
      print(f"| trajax before issue 16 (148a6db kernel) | {med_base:.3f} | "
            f"{tokens / med_base:,.0f} | {float(np.median(t_torch / t_base)):.2f}x |")
      print("round s baseline " + " ".join(f"{x:.3f}" for x in t_base))
    if not args.skip_memory:
      mpath = os.path.join(tmp, "mem")
      make_checkpoint("mem", mpath)
      m_jax, m_torch = peak_memory("trajax", mpath), peak_memory("torch", mpath)
      print()
      print("peak RSS scoring batch 8 x 2048, vocab 50272 (hidden 64, 2 layers; float32 logits "
            "alone would be 3,294 MB):")
      print("| impl | peak RSS MiB |")
      print("|---|---|")
      print(f"| transformers PyTorch | {m_torch:,.0f} |")
      print(f"| trajax | {m_jax:,.0f} |")


if __name__ == "__main__":
  main()
