"""What the benchmarks share: OPT shapes, random checkpoints, page-cache control."""
import ctypes
import ctypes.util
import mmap
import os

# OPT shapes (Zhang et al. 2022, Table 1) and two small ones for quick CPU runs.
SHAPES = {
    "mem": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 256},
    "small": {
        "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "ffn_dim": 1024
    },
    "125m": {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072
    },
    "1.3b": {
        "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32, "ffn_dim": 8192
    },
    "6.7b": {
        "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "ffn_dim": 16384
    },
}


def make_checkpoint(shape, path, seed=0, dtype="float32"):
  """A random OPT of `shape` saved by transformers (`save_pretrained`, safetensors)."""
  import torch
  from transformers import OPTConfig, OPTForCausalLM
  torch.manual_seed(seed)
  cfg = OPTConfig(vocab_size=50272, max_position_embeddings=2048, **SHAPES[shape])
  OPTForCausalLM(cfg).to(getattr(torch, dtype)).save_pretrained(path)
  return path


def files_under(path):
  out = []
  for root, _, names in os.walk(path):
    out += [os.path.join(root, n) for n in names if not os.path.islink(os.path.join(root, n))]
  return sorted(out)


def disk_bytes(path):
  return sum(os.path.getsize(f) for f in files_under(path))


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long)
_LIBC.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_LIBC.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))


def resident_fraction(path):
  """Share of the pages of the files under `path` that sit in the page cache (mincore(2))."""
  page, resident, total = mmap.PAGESIZE, 0, 0
  for f in files_under(path):
    size = os.path.getsize(f)
    if size == 0:
      continue
    n = (size + page - 1) // page
    fd = os.open(f, os.O_RDONLY)
    try:
      addr = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
      if addr in (None, ctypes.c_void_p(-1).value):
        return float("nan")
      try:
        vec = (ctypes.c_ubyte * n)()
        if _LIBC.mincore(addr, size, vec) != 0:
          return float("nan")
        resident += sum(v & 1 for v in vec)
        total += n
      finally:
        _LIBC.munmap(addr, size)
    finally:
      os.close(fd)
  return resident / max(total, 1)


class Evictor:
  """Evicts a checkpoint's pages from the page cache before a cold read.

  posix_fadvise(DONTNEED) on the checkpoint's own files comes first: it needs no
  root and leaves the rest of a shared machine's cache alone. Only if pages stay
  resident is `/proc/sys/vm/drop_caches` tried (root; drops every cache).
  """
  def __init__(self):
    self.method, self.problems = None, []

  def evict(self, path) -> bool:
    """Evicts `path`'s pages; False when no available method evicts them."""
    os.sync()
    if self.method in (None, "posix_fadvise(DONTNEED)") and hasattr(os, "posix_fadvise"):
      for f in files_under(path):
        fd = os.open(f, os.O_RDONLY)
        try:
          os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
          os.close(fd)
      if resident_fraction(path) <= 0.01:
        self.method = "posix_fadvise(DONTNEED)"
        return True
      self.problems.append(f"posix_fadvise left {resident_fraction(path):.0%} of {path} resident")
    try:
      with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    except OSError as e:
      self.problems.append(f"/proc/sys/vm/drop_caches not writable ({type(e).__name__}: {e})")
      return False
    self.method = "drop_caches"
    return True
