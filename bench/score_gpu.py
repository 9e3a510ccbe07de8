"""GPU per-token scoring: trajax vs transformers PyTorch, side by side in one run.

  python bench/score_gpu.py                       # 125m b16, 1.3b b8, 6.7b b4, x 2048 tokens
  python bench/score_gpu.py --shapes=125m --attention=cudnn,xla

The 8-checkpoint 1.3b sweep (read/compute overlap) is bench/sweep_bench.py:
  python bench/sweep_bench.py --shape=1.3b --ckpts=8 --dtype=bfloat16 --rows=16 --block_len=2048

Protocol (issue "Scale"): bf16 random weights, the same weights in both, batch x 2048
tokens; torch runs OPTForCausalLM (bf16, SDPA) then log-softmax + gather in float32;
trajax runs its jitted kernel (bf16 weights, float32 fused chunked log-softmax).
MFU = (2 * params + 4 * layers * length * hidden) FLOPs per token / the bf16 matmul peak
measured in this run. Prints a markdown table for docs/PERFORMANCE.md.
"""
import argparse
import datetime
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {  # hidden, layers, heads, ffn, batch
    "125m": (768, 12, 12, 3072, 16),
    "1.3b": (2048, 24, 32, 8192, 8),
    "6.7b": (4096, 32, 32, 16384, 4),
}
LENGTH = 2048


def hf_config(shape):
  h, l, heads, ffn, _ = SHAPES[shape]
  return dict(model_type="opt", vocab_size=50272, hidden_size=h, num_hidden_layers=l,
              num_attention_heads=heads, ffn_dim=ffn, word_embed_proj_dim=h,
              max_position_embeddings=2048, do_layer_norm_before=True)


def matmul_peak_tflops(jax, jnp):
  n = 8192
  a = jnp.ones((n, n), jnp.bfloat16)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(20):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * 20 / (time.perf_counter() - t0) / 1e12


def timed(fn, sync, repeats=5):
  fn()
  sync()
  t0 = time.perf_counter()
  for _ in range(repeats):
    fn()
  sync()
  return (time.perf_counter() - t0) / repeats


def bench_shape(shape, attentions, peak):
  import torch
  from transformers import OPTConfig, OPTForCausalLM
  import trajax
  from trajax import hf_checkpoints
  from trajax.models import set_attention_implementation
  cfg = hf_config(shape)
  batch = SHAPES[shape][4]
  torch.manual_seed(0)
  ref = OPTForCausalLM(
      OPTConfig(**{k: v for k, v in cfg.items() if k != "model_type"},
                attn_implementation="sdpa")).to("cuda", torch.bfloat16).eval()
  state = {k: v.detach().float().cpu().numpy() for k, v in ref.state_dict().items()}
  model = hf_checkpoints.from_state_dict(cfg, state, dtype="bfloat16")
  del state
  params = sum(p.numel() for p in ref.parameters())
  ids = np.random.RandomState(0).randint(3, 50265, size=(batch, LENGTH))
  tids = torch.tensor(ids, device="cuda")

  def torch_score():
    with torch.inference_mode():
      logits = ref(input_ids=tids).logits.float()
      return torch.log_softmax(logits, -1)[:, :-1].gather(-1, tids[:, 1:, None])

  t_torch = timed(torch_score, torch.cuda.synchronize)
  want = torch_score()[..., 0].float().cpu().numpy()
  tokens = batch * LENGTH
  h, l = SHAPES[shape][0], SHAPES[shape][1]
  flops_per_token = 2 * params + 4 * l * LENGTH * h
  rows = [("transformers PyTorch (bf16, SDPA)", t_torch, None)]
  for impl in attentions:
    set_attention_implementation(model, None if impl == "default" else impl)
    scorer = trajax.Scorer(model)
    try:
      t = timed(lambda: scorer(ids), lambda: None)
      diff = float(np.nanmax(np.abs(scorer(ids)[:, 1:] - want)))
      rows.append((f"trajax (attention={impl})", t, diff))
    except Exception as e:  # an unsupported kernel on this GPU: report, go on
      rows.append((f"trajax (attention={impl}) FAILED: {type(e).__name__}: {e}"[:200], None, None))
  print(f"\nOPT-{shape} shape, bf16, batch {batch} x {LENGTH}, params {params / 1e6:,.0f}M")
  print("| impl | tokens/s | MFU | ratio vs torch | max abs logprob diff vs torch |")
  print("|---|---|---|---|---|")
  for name, t, diff in rows:
    if t is None:
      print(f"| {name} | - | - | - | - |")
      continue
    tps = tokens / t
    mfu = tps * flops_per_token / (peak * 1e12)
    print(f"| {name} | {tps:,.0f} | {mfu:.2f} | {t_torch / t:.2f}x | "
          f"{'-' if diff is None else f'{diff:.3f}'} |")
  del model
  ref.cpu()  # frees its GPU memory for the next shape
  torch.cuda.empty_cache()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shapes", default="125m,1.3b,6.7b")
  p.add_argument("--attention", default="cudnn,default")
  args = p.parse_args()
  import jax
  import jax.numpy as jnp
  import torch
  if jax.default_backend() != "gpu":
    sys.exit("bench/score_gpu.py needs a GPU (use bench/score_cpu.py on CPU)")
  peak = matmul_peak_tflops(jax, jnp)
  print(f"# score_gpu {datetime.date.today()} | {jax.devices()[0].device_kind} | jax "
        f"{jax.__version__} | torch {torch.__version__} | measured bf16 matmul peak "
        f"{peak:.0f} TFLOP/s")
  for shape in args.shapes.split(","):
    bench_shape(shape, args.attention.split(","), peak)


if __name__ == "__main__":
  main()
