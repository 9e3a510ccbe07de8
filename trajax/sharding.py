"""Logical axes -> mesh axes: one short table, as T5X's standard rules.

Every parameter carries `logical_axes` metadata (see `trajax.models.layers`).
The mesh has three axes: `data` (batch), `fsdp` (parameters sharded, gathered
per layer), `tensor` (heads / MLP split across devices).
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (None = replicated). Unlisted names are replicated.
LOGICAL_RULES = (
    ("batch", "data"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)


def make_mesh(shape: Sequence[int] | str = (-1, 1, 1), devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh; one entry may be -1 (= all remaining devices).

  `shape` may be a string such as "2,2,2" (as configs give it).
  """
  devices = list(devices if devices is not None else jax.devices())
  if isinstance(shape, str):
    try:
      shape = [int(x) for x in shape.split(",")]
    except ValueError:
      raise ValueError(f"mesh shape {shape!r}: expected three comma-separated ints") from None
  shape = list(shape)
  if len(shape) != 3 or shape.count(-1) > 1:
    raise ValueError(f"mesh shape must be 3 sizes for {MESH_AXES} with at most one -1, got "
                     f"{shape}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh {shape}: {len(devices)} devices are not divisible by {known}")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh {shape} needs {int(np.prod(shape))} devices, have {len(devices)}")
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                    mesh: jax.sharding.Mesh, rules=LOGICAL_RULES) -> P:
  """The PartitionSpec for an array; a dim not divisible by its mesh axis is replicated."""
  table = dict(rules)
  spec, used = [], set()
  for name, dim in zip(logical_axes, shape):
    axis = table.get(name)
    if axis is None or axis in used or dim % mesh.shape[axis]:
      spec.append(None)
    else:
      spec.append(axis)
      used.add(axis)
  return P(*spec)


def param_sharding_fn(mesh: jax.sharding.Mesh, rules=LOGICAL_RULES):
  """(logical_axes, shape) -> NamedSharding, for `trajax.checkpoints.load`."""
  def fn(logical_axes, shape):
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))

  return fn


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """[batch, length] arrays split over `data`."""
  return NamedSharding(mesh, P("data", None))
