"""Multi-process start-up: TPU pods, SLURM, or an explicit coordinator.

Every process runs the same launcher. `initialize` must run before anything
touches a device. With no arguments on a TPU pod or under SLURM, JAX finds the
coordinator itself; elsewhere pass the coordinator's address, the number of
processes and this process's id (flags or TRAJAX_COORDINATOR,
TRAJAX_NUM_PROCESSES, TRAJAX_PROCESS_ID).
"""
from __future__ import annotations

import os

import jax
from absl import logging


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               auto: bool = False) -> bool:
  """Joins the multi-process job if one is configured; returns whether it did."""
  coordinator_address = coordinator_address or os.environ.get("TRAJAX_COORDINATOR", "")
  num_processes = num_processes or int(os.environ.get("TRAJAX_NUM_PROCESSES", "0"))
  if process_id < 0:
    process_id = int(os.environ.get("TRAJAX_PROCESS_ID", "-1"))
  if not coordinator_address and not auto:
    return False
  # Cross-process collectives between CPU devices (tests, laptops) go through gloo; the
  # setting only affects the CPU backend. Querying the backend here would initialise it,
  # which jax.distributed.initialize must precede.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError("a coordinator address needs num_processes >= 1 and process_id >= 0")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()  # TPU pod / SLURM / Kubernetes auto-detection
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_writer() -> bool:
  """Process 0 writes every output; the others compute beside it (or wait)."""
  return jax.process_index() == 0


def define_flags() -> None:
  """Defines the multi-process flags every launcher accepts (absl)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for a multi-process run.")
  flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", -1, "This process's id in a multi-process run.")
  flags.DEFINE_bool("multihost", False,
                    "Join a TPU pod / SLURM job found by jax.distributed itself.")


def initialize_from_flags() -> bool:
  """`initialize` with the flags of `define_flags`; logs the devices either way."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  joined = initialize(f.coordinator_address, f.num_processes, f.process_id, auto=f.multihost)
  logging.info("JAX devices: %s", jax.devices())
  return joined
