"""Runs a scoring sweep on a filesystem that fills up after the first row is written.

Started by test_disk_full.py, either inside a private mount namespace on a
small tmpfs (`--fault=enospc`: a ballast file takes every free byte, the next
write gets ENOSPC) or, where mounting is not allowed, under a file-size limit
(`--fault=efbig`: RLIMIT_FSIZE below a row's chunk, the next write gets EFBIG).
Either way the failure comes from the kernel, not from a mock.

It reports what happened as JSON on the last stdout line and copies the
workdir to `--copy_to` (outside the tmpfs, which dies with the namespace).
"""
import argparse
import json
import os
import resource
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from trajax import atomic, store, sweep  # noqa: E402
from configs import score as score_config  # noqa: E402


def fill_disk(workdir: str) -> int:
  """Writes zeros into `workdir/ballast` until the filesystem refuses; returns bytes written."""
  written = 0
  with open(os.path.join(workdir, "ballast"), "wb", buffering=0) as f:
    block = b"\0" * 4096
    while True:
      try:
        written += f.write(block)
      except OSError:
        return written


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--settings", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--copy_to", required=True)
  p.add_argument("--fault", choices=["enospc", "efbig"], required=True)
  args = p.parse_args()
  with open(args.settings) as f:
    settings = json.load(f)
  config = score_config.get_config()
  for key, value in settings.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value

  # An earlier output, written while there is room; a later rewrite must leave it intact.
  results = os.path.join(args.workdir, "results.csv")
  atomic.write_text(results, "step,ppl\n10,3.5\n")

  report = {"fault": args.fault, "rows_before_fault": 0}
  real_write = store.ModelRows.write

  def write_then_fill(self, index, row):
    real_write(self, index, row)
    if report["rows_before_fault"] == 0:
      if args.fault == "enospc":
        report["ballast_bytes"] = fill_disk(args.workdir)
      else:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a fatal signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
    report["rows_before_fault"] += 1

  store.ModelRows.write = write_then_fill
  try:
    sweep.run(config, args.workdir)
    report["sweep_error"] = None
  except atomic.DiskFull as e:
    report["sweep_error"] = f"{type(e).__name__}: {e}"
  try:
    atomic.write_text(results, "step,ppl\n10,3.5\n20,3.1\n" * 1000)
    report["rewrite_error"] = None
  except atomic.DiskFull as e:
    report["rewrite_error"] = f"{type(e).__name__}: {e}"
  report["leftover_tmp_files"] = sorted(
      os.path.relpath(os.path.join(d, n), args.workdir) for d, _, names in os.walk(args.workdir)
      for n in names if ".tmp-" in n or "__lock" in n)

  resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
  if os.path.exists(os.path.join(args.workdir, "ballast")):
    os.remove(os.path.join(args.workdir, "ballast"))
  shutil.copytree(args.workdir, args.copy_to, ignore=shutil.ignore_patterns(".trajax.lock"))
  print(json.dumps(report))


if __name__ == "__main__":
  main()
