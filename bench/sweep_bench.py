"""Checkpoint sweep: reading checkpoint k+1 while scoring k, against reading then scoring.

  python bench/sweep_bench.py                                  # CPU: 6 x OPT-small
  python bench/sweep_bench.py --shape=125m --ckpts=4 --rows=2 --block_len=512
  python bench/sweep_bench.py --shape=1.3b --ckpts=8 --dtype=bfloat16 --rows=16   # GPU host
  python bench/sweep_bench.py --cold                           # evict pages before each sweep

`--ckpts` random OPT checkpoints of one shape are written with transformers
(`save_pretrained`, safetensors) to local disk (`--dir`, default a temp dir),
then one trajectory is swept twice into fresh stores, in one process, with the
same weights and data: with `config.prefetch=False` (the reference: each read
starts after the previous row is written, wall ~ read + compute) and with
prefetch on (wall -> max(read, compute)). A one-checkpoint sweep runs first so
compilation is in neither. Reads are timed in the reading thread; compute is
scoring + writing the row. The issue's goal on a GPU host: wall within 1.2x of
max(read, compute) for 8 checkpoints of the 1.3b shape.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import SHAPES, Evictor, disk_bytes, make_checkpoint  # noqa: E402

TOKENIZER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                         "shared", "data", "tokenizer", "opt")


def write_inputs(root, shape, n_ckpts, dtype, rows, block_len):
  """Checkpoints, one document of enough tokens, and the manifest; returns its path."""
  t0 = time.perf_counter()
  ckpts = []
  for k in range(n_ckpts):
    path = os.path.join(root, f"step{k + 1}")
    if not os.path.isfile(os.path.join(path, "config.json")):
      make_checkpoint(shape, path, seed=k, dtype=dtype)
    ckpts.append({"step": k + 1, "path": os.path.basename(path)})
  print(f"# {n_ckpts} checkpoints ready in {time.perf_counter() - t0:.0f}s "
        f"({disk_bytes(os.path.join(root, 'step1')) / 1e6:,.0f} MB each)")
  words = rows * block_len  # ~1 token per word: plenty for `rows` blocks
  with open(os.path.join(root, "doc.txt"), "w") as f:
    f.write(" ".join(f"word{i % 5000} and the river" for i in range(words)))
  manifest = os.path.join(root, "traj.json")
  with open(manifest, "w") as f:
    json.dump({"models": [{"name": shape, "tokens_per_step": 2**20, "checkpoints": ckpts}]}, f)
  return manifest


def sweep_config(manifest, root, dtype, rows, block_len, batch, prefetch):
  from configs import score as score_config
  config = score_config.get_config()
  config.trajectory = manifest
  config.tokenizer = TOKENIZER
  config.data.files = os.path.join(root, "doc.txt")
  config.data.block_len = block_len
  config.data.gutenberg = False
  config.data.max_docs = 0
  config.dtype = dtype
  config.batch_size = batch
  config.prefetch = prefetch
  return config


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="small", choices=sorted(SHAPES))
  p.add_argument("--ckpts", type=int, default=6)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--rows", type=int, default=4, help="blocks of data scored per checkpoint")
  p.add_argument("--block_len", type=int, default=512)
  p.add_argument("--batch", type=int, default=0, help="rows per call; 0 = --rows")
  p.add_argument("--dir", default="", help="where the checkpoints go (default: a temp dir)")
  p.add_argument("--cold", action="store_true", help="evict the checkpoints' pages per sweep")
  args = p.parse_args()
  import jax
  from trajax import sweep

  root = args.dir or tempfile.mkdtemp(prefix="sweep_bench_")
  os.makedirs(root, exist_ok=True)
  for name in os.listdir(root):  # stores of an earlier run in --dir: every sweep starts fresh
    if name.startswith("out_"):
      shutil.rmtree(os.path.join(root, name))
  try:
    manifest = write_inputs(root, args.shape, args.ckpts, args.dtype, args.rows, args.block_len)
    cfg = lambda prefetch: sweep_config(manifest, root, args.dtype, args.rows, args.block_len, args.
                                        batch or args.rows, prefetch)
    warm = os.path.join(root, "warm.json")
    with open(manifest) as f:
      one = json.load(f)
    one["models"][0]["checkpoints"] = one["models"][0]["checkpoints"][:1]
    with open(warm, "w") as f:
      json.dump(one, f)
    warm_cfg = cfg(True)
    warm_cfg.trajectory = warm
    sweep.run(warm_cfg, os.path.join(root, "out_warm"))  # compiles the kernel for these shapes

    evictor = Evictor() if args.cold else None
    results, stored = {}, {}
    for prefetch in (False, True):
      if evictor is not None:
        for k in range(args.ckpts):
          if not evictor.evict(os.path.join(root, f"step{k + 1}")):
            sys.exit("--cold is not available here: " + "; ".join(evictor.problems))
      timings = []
      reader = sweep.run(cfg(prefetch), os.path.join(root, f"out_prefetch_{prefetch}"),
                         timings=timings)
      results[prefetch] = timings[0]
      stored[prefetch] = reader.logprobs(args.shape).tobytes()
    same = stored[False] == stored[True]
  finally:
    if not args.dir:
      shutil.rmtree(root, ignore_errors=True)

  dev = jax.devices()[0]
  print(f"# sweep_bench {datetime.date.today()} | {platform.machine()} {os.cpu_count()} CPU(s) | "
        f"{dev.platform}: {dev.device_kind} | jax {jax.__version__}")
  print(f"OPT-{args.shape} shape, {args.ckpts} checkpoints ({args.dtype} safetensors), "
        f"{args.rows} x {args.block_len} tokens each, page cache "
        f"{'evicted before each sweep (' + evictor.method + ')' if evictor else 'warm'}; "
        f"stores equal: {same}")
  print("| mode | wall s | read s | read MB/s | compute s | wall / max(read, compute) | "
        "wall / (read + compute) | speed-up vs sequential |")
  print("|---|---|---|---|---|---|---|---|")
  base = results[False].wall_s
  for prefetch, name in ((False, "sequential (read, then score)"),
                         (True, "trajax prefetch (read k+1 while scoring k)")):
    t = results[prefetch]
    print(f"| {name} | {t.wall_s:.1f} | {t.read_s:.1f} | {t.read_bytes / 1e6 / t.read_s:,.0f} | "
          f"{t.compute_s:.1f} | {t.wall_over_bound:.2f} | "
          f"{t.wall_s / (t.read_s + t.compute_s):.2f} | {base / t.wall_s:.2f}x |")


if __name__ == "__main__":
  main()
