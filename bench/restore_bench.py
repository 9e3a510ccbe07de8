"""Checkpoint read time: HF safetensors (trajax load_hf) vs the converted orbax checkpoint.

  python bench/restore_bench.py                  # OPT-125m shape, page cache warm
  python bench/restore_bench.py --cold           # evict the files' pages before each read
  python bench/restore_bench.py --shape=small    # a quick run

One random OPT checkpoint (transformers `save_pretrained`, float32 safetensors)
is converted once to orbax at float32 and at bfloat16. Each row times reading
a whole model onto the device (until `jax.block_until_ready`): the median of
`--repeats` reads after one warm-up read. MB/s is the row's on-disk bytes over
its seconds; the ratio is the safetensors row's seconds over this row's, at the
same target dtype (> 1: faster than safetensors).

--cold evicts the checkpoint's pages from the page cache before every read:
`posix_fadvise(DONTNEED)` on its own files (no root, the rest of a shared
machine's cache untouched), else `echo 3 > /proc/sys/vm/drop_caches` (root).
The share of its pages still resident (mincore) is printed; when neither works
the cold table is reported unavailable, never estimated. On a virtual machine
the host may still cache the disk image, so "cold" means cold in this kernel.
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
from bench.common import SHAPES, Evictor, disk_bytes, make_checkpoint, resident_fraction  # noqa: E402


class _NoCold(Exception):
  pass


def time_reads(read, path, repeats, evictor=None):
  """Median seconds of `repeats` reads after one warm-up; also the max resident share seen."""
  import jax
  jax.block_until_ready(jax.tree.leaves(read()))  # warm-up: imports, compiles, page cache
  times, resident = [], []
  for _ in range(repeats):
    if evictor is not None:
      if not evictor.evict(path):
        raise _NoCold()
      resident.append(resident_fraction(path))
    t0 = time.perf_counter()
    state = read()
    jax.block_until_ready(jax.tree.leaves(state))
    times.append(time.perf_counter() - t0)
    del state
  return float(np.median(times)), (max(resident) if resident else None)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="125m", choices=sorted(SHAPES))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--cold", action="store_true",
                 help="evict the page cache before each read (see module docstring)")
  args = p.parse_args()
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  from flax import nnx

  import trajax
  from trajax import orbax_checkpoints

  evictor = Evictor() if args.cold else None

  def state_of(model):
    return nnx.state(model)

  with tempfile.TemporaryDirectory() as tmp:
    hf = os.path.join(tmp, "hf")
    make_checkpoint(args.shape, hf)
    converted = {}
    for dtype in ("float32", "bfloat16"):
      out = os.path.join(tmp, f"orbax_{dtype}")
      t0 = time.perf_counter()
      orbax_checkpoints.convert(hf, out, dtype=dtype)
      converted[dtype] = (out, time.perf_counter() - t0)
    rows = []
    for dtype in ("float32", "bfloat16"):
      jdt = jnp.dtype(dtype)
      cases = [("safetensors (HF, float32 file) -> load_hf", hf,
                lambda d=jdt: state_of(trajax.load_hf(hf, dtype=d)))]
      for stored in ("float32", "bfloat16") if dtype == "bfloat16" else ("float32",):
        path = converted[stored][0]
        cases.append((f"orbax (stored {stored}) -> restore", path,
                      lambda d=jdt, path=path: state_of(orbax_checkpoints.restore(path, dtype=d))))
      base = None
      for name, path, read in cases:
        try:
          secs, resident = time_reads(read, path, args.repeats, evictor)
        except _NoCold:
          print("# cold numbers are not available on this machine: " + "; ".join(evictor.problems))
          return
        base = base or secs
        size = disk_bytes(path)
        rows.append((name, dtype, secs, size, base / secs, resident))

    print(f"# restore_bench {datetime.date.today()} | {platform.machine()} {os.cpu_count()} "
          f"CPU(s), shared machine | jax {jax.__version__} ({jax.default_backend()}) | orbax "
          f"{ocp.__version__}")
    n_params = orbax_checkpoints.read_marker(converted["float32"][0])["params"]
    print(f"shape OPT-{args.shape} ({n_params:,} params), vocab 50272; median of {args.repeats} "
          f"reads after 1 warm-up; " +
          (f"COLD: page cache evicted before each read with {evictor.method}"
           if evictor else "page cache WARM (files read from memory, not disk)"))
    print(f"one-time conversion: {converted['float32'][1]:.1f}s to float32, "
          f"{converted['bfloat16'][1]:.1f}s to bfloat16")
    cold_col = " | resident after eviction" if evictor else ""
    print(f"| format | dtype | seconds | MB on disk | MB/s | ratio vs safetensors{cold_col} |")
    print("|---|---|---|---|---|---|" + ("---|" if evictor else ""))
    for name, dtype, secs, size, ratio, resident in rows:
      extra = f" | {resident:.0%}" if evictor else ""
      print(f"| {name} | {dtype} | {secs:.3f} | {size / 1e6:,.1f} | {size / 1e6 / secs:,.0f} | "
            f"{ratio:.2f}x{extra} |")


if __name__ == "__main__":
  main()
