"""Two-model interpolated decoding: trajax vs a transformers PyTorch loop, same device.

Greedy p_s − p_l (the paper's "ps-pl"), [BOS] + 5-token prompts, 50 new tokens,
batch 1 and 32. On a GPU: small = OPT-125m shape, large = OPT-6.7b shape, random
bf16 weights. On CPU (`--cpu_small`, the default without a GPU): hidden 256 / 4
layers vs hidden 1024 / 8 layers, vocab 50272, float32, and both frameworks get
the SAME weights (written once with save_pretrained), so the generated tokens are
also compared.

The torch reference does the same arithmetic per step: softmax of both models'
last logits in float32, p_s − p_l, entries ≤ 0 removed, argmax; both models
keep `past_key_values`; the final token is not fed back (as trajax). Neither
side stops at EOS, so both run exactly 50 steps.

  python bench/decode_bench.py            # CPU small shapes when no GPU
  python bench/decode_bench.py --nocpu_small --batches=1,32
"""
import datetime
import os
import sys
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trajax import decoding, hf_checkpoints  # pylint: disable=g-import-not-at-top
from trajax.models import opt  # pylint: disable=g-import-not-at-top

_HAS_GPU = any(d.platform == "gpu" for d in jax.devices())
_CPU_SMALL = flags.DEFINE_bool("cpu_small", not _HAS_GPU, "Small shapes on CPU.")
_BATCHES = flags.DEFINE_list("batches", ["1", "32"], "Batch sizes.")
_NEW = flags.DEFINE_integer("new_tokens", 50, "Tokens generated per row.")
_PROMPT = flags.DEFINE_integer("prompt_tokens", 5, "Prompt tokens after BOS.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Alternating rounds (medians reported) after one "
    "warm-up of each side.")
_CLOCK = flags.DEFINE_enum(
    "clock", "wall", ["wall", "process"], "process: this process's CPU time (CPU only; for one "
    "thread per side run as XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 1 ... "
    "--torch_threads=1).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "0: every core (CPU) / default (GPU).")

# OPT-125m / OPT-6.7b (HF facebook/opt-*) and the CPU stand-ins.
GPU_SHAPES = (dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072),
              dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384))
CPU_SHAPES = (dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024),
              dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, ffn_dim=4096))
# HBM bandwidth (bytes/s) by device kind, for the weight-read roof.
BANDWIDTH = {
    "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12,
    "A100-SXM4-80GB": 2.04e12, "A100": 1.6e12
}


def hf_config(shape):
  from transformers import OPTConfig  # pylint: disable=g-import-not-at-top
  return OPTConfig(vocab_size=50272, max_position_embeddings=2048,
                   word_embed_proj_dim=shape["hidden_size"], attn_implementation="sdpa", **shape)


def build(shapes, cpu_small, tmp):
  """(torch small, torch large, trajax small, trajax large, same_weights)."""
  from transformers import OPTForCausalLM  # pylint: disable=g-import-not-at-top
  device = "cpu" if cpu_small else "cuda"
  tdtype = torch.float32 if cpu_small else torch.bfloat16
  out_t, out_j = [], []
  for i, shape in enumerate(shapes):
    torch.manual_seed(i)
    with torch.device(device):
      tm = OPTForCausalLM(hf_config(shape)).to(tdtype).eval()
    out_t.append(tm)
    if cpu_small:  # same weights on both sides
      path = os.path.join(tmp, f"m{i}")
      tm.save_pretrained(path)
      out_j.append(hf_checkpoints.load_hf(path, dtype=jnp.float32))
    else:  # 6.7b: random trajax weights of the same shape (no 13 GB round trip)
      cfg = opt.OPTConfig(vocab_size=50272, word_embed_proj_dim=shape["hidden_size"], **shape)
      out_j.append(opt.create(cfg, dtype=jnp.bfloat16, seed=i))
  return (*out_t, *out_j, cpu_small)


@torch.inference_mode()
def torch_decode(ms, ml, ids, n):
  """Greedy p_s − p_l with both models' past_key_values; returns [batch, n] ids."""
  def step(model, x, pkv):
    try:
      out = model(input_ids=x, past_key_values=pkv, use_cache=True, logits_to_keep=1)
    except TypeError:
      out = model(input_ids=x, past_key_values=pkv, use_cache=True)
    return out.logits[:, -1].float(), out.past_key_values

  ls, pkv_s = step(ms, ids, None)
  ll, pkv_l = step(ml, ids, None)
  toks = []
  for i in range(n):
    p = torch.softmax(ls, -1) - torch.softmax(ll, -1)
    p = torch.where(p > 0, p, torch.zeros_like(p))
    p = p / p.sum(-1, keepdim=True)
    nxt = p.argmax(-1)
    toks.append(nxt)
    if i + 1 < n:
      ls, pkv_s = step(ms, nxt[:, None], pkv_s)
      ll, pkv_l = step(ml, nxt[:, None], pkv_l)
  return torch.stack(toks, 1)


def alternate(fns, rounds, sync, clock):
  """Runs `fns` (warm-up each, then `rounds` rounds, one after another); returns per-call
  seconds [len(fns), rounds] and each function's last output."""
  now = time.process_time if clock == "process" else time.perf_counter
  outs = []
  for fn in fns:
    outs.append(fn())
    sync()
  times = np.zeros((len(fns), rounds))
  for r in range(rounds):
    for i, fn in enumerate(fns):
      t0 = now()
      outs[i] = fn()
      sync()
      times[i, r] = now() - t0
  return times, outs


def weight_bytes(model):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.__dict__["model"]))


def main(argv):
  del argv
  cpu_small = _CPU_SMALL.value
  shapes = CPU_SHAPES if cpu_small else GPU_SHAPES
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  elif cpu_small:
    torch.set_num_threads(os.cpu_count())
  n = _NEW.value
  with tempfile.TemporaryDirectory() as tmp:
    ts, tl, js, jl, same = build(shapes, cpu_small, tmp)
  dev = jax.devices()[0]
  sync = torch.cuda.synchronize if not cpu_small else (lambda: None)
  roof_bw = None if cpu_small else next(
      (v for k, v in BANDWIDTH.items() if k in dev.device_kind), None)
  wbytes = weight_bytes(js) + weight_bytes(jl)
  print(f"# decode_bench {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | "
        f"jax {jax.__version__} | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} | CPUs usable "
        f"{len(os.sched_getaffinity(0))} | load average {os.getloadavg()[0]:.2f}")
  print(f"device: {dev.device_kind} ({dev.platform}); small {shapes[0]} large {shapes[1]}; "
        f"vocab 50272; {'float32' if cpu_small else 'bfloat16'}; weights "
        f"{wbytes / 2**20:.0f} MiB; {n} new tokens, prompt BOS + {_PROMPT.value}; "
        f"{_REPEATS.value} alternating rounds, {_CLOCK.value} clock (medians)")
  header = ("batch", "trajax tok/s", "torch tok/s", "ratio (median of rounds)", "trajax ms/step",
            "torch ms/step", "roof ms/step", "tokens equal", "load after")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for b in [int(x) for x in _BATCHES.value]:
    rng = np.random.RandomState(b)
    ids = rng.randint(4, 50265, size=(b, _PROMPT.value + 1)).astype(np.int32)
    ids[:, 0] = 2
    ids_t = torch.tensor(ids, dtype=torch.long, device="cpu" if cpu_small else "cuda")
    print(f"batch {b}: trajax and torch, alternating ...", flush=True)
    times, (g, tt) = alternate([
        lambda: decoding.generate(js, jl, ids, max_new_tokens=n, lambdas="ps-pl", stop_at_eos=False
                                 ), lambda: torch_decode(ts, tl, ids_t, n)
    ], _REPEATS.value, sync, _CLOCK.value)
    t_j, t_t = np.median(times, axis=1)
    print(
        f"batch {b}: round s trajax {np.round(times[0], 3).tolist()} torch "
        f"{np.round(times[1], 3).tolist()}", flush=True)
    equal = (f"{(g.tokens_bn == tt.cpu().numpy()).mean():.3f}" if same else "n/a (random)")
    roof = f"{wbytes / roof_bw * 1e3:.2f}" if roof_bw else "-"
    lines.append(f"| {b} | {b * n / t_j:.1f} | {b * n / t_t:.1f} | "
                 f"{np.median(times[1] / times[0]):.2f} | {t_j / n * 1e3:.2f} | "
                 f"{t_t / n * 1e3:.2f} | {roof} | {equal} | {os.getloadavg()[0]:.2f} |")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
