"""XLA:CPU compile options for trajax's hot kernels (scoring, decoding).

By default XLA:CPU (jaxlib 0.10) hands every dot to YNNPACK. On our 2-core x86 machine its
float32 GEMMs for the OPT-125m layer shapes ran at 0.76-0.89x of the Eigen kernels XLA uses
otherwise (which match PyTorch's MKL), while its reductions are 3x faster than XLA's own
emitter for the softmax max/sum. So the kernels keep YNNPACK for reductions only
(`bench/attention_cpu.py` and docs/PERFORMANCE.md have the measurements). The option only
changes which library computes a dot, not its float32 arithmetic: results agree to
float32 rounding. A jaxlib that does not know the option compiles with its defaults.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def options() -> dict[str, str] | None:
  """OPTIONS when the default backend is the CPU and this jaxlib accepts them, else None."""
  if jax.default_backend() != "cpu":
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=OPTIONS).lower(jnp.float32(0)).compile()
  except Exception:  # pylint: disable=broad-except; an unknown option is jaxlib's own error type
    return None
  return OPTIONS


def jit(fun, **jit_kwargs):
  """`jax.jit(fun, **jit_kwargs)`, plus a CPU variant compiled with `options()`.

  Returns a function that calls the CPU variant when `options()` applies (decided at the
  first call, not at import, so importing trajax never initialises a backend) and the
  plain jit otherwise. `.active()` is the jitted function calls use (for `.lower()` and
  `_cache_size()`), `.plain` the one without the options.
  """
  plain = jax.jit(fun, **jit_kwargs)
  tuned = {}

  def active():
    opts = options()
    if opts is None:
      return plain
    if "f" not in tuned:
      tuned["f"] = jax.jit(fun, compiler_options=opts, **jit_kwargs)
    return tuned["f"]

  @functools.wraps(fun)
  def call(*args, **kwargs):
    return active()(*args, **kwargs)

  call.plain = plain
  call.active = active
  return call
