"""Converts Hugging Face checkpoints once into orbax checkpoints that restore sharded.

  python launch/convert.py --hf_dir=ckpts/125m/step2000 --out_dir=orbax/125m/step2000
  python launch/convert.py --trajectory=runs/opt.json --out_root=orbax/opt --dtype=bfloat16

With --trajectory, every checkpoint is converted to OUT_ROOT/<model>/step<step>
and OUT_ROOT/trajectory.json lists them, ready for launch/score.py; rerunning
keeps what is already converted.
"""
import time

import jax
from absl import app, flags, logging

from trajax import checkpoints, convert, distributed, orbax_checkpoints, sharding

_HF_DIR = flags.DEFINE_string("hf_dir", None, "One HF checkpoint directory to convert.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the converted --hf_dir.")
_TRAJECTORY = flags.DEFINE_string("trajectory", None,
                                  "Manifest of HF checkpoints to convert, all of them.")
_OUT_ROOT = flags.DEFINE_string("out_root", None,
                                "Output root for --trajectory; receives trajectory.json.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Stored dtype; default keeps the checkpoint's own dtype.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace existing converted checkpoints (never other directories).")
_COMPRESS = flags.DEFINE_bool("compress", False,
                              "zstd-compress the arrays: smaller, slower to restore on a CPU.")
_MESH = flags.DEFINE_string(
    "mesh_shape", "", "Load each checkpoint on this (data,fsdp,tensor) mesh, e.g. '1,-1,1', "
    "for models larger than one device.")
_ALLOW_OUTSIDE_ROOT = flags.DEFINE_bool("allow_outside_root", False,
                                        "Let manifest paths resolve outside its root.")
distributed.define_flags()


def main(argv):
  del argv
  one = (_HF_DIR.value, _OUT_DIR.value)
  many = (_TRAJECTORY.value, _OUT_ROOT.value)
  if not (all(one) and not any(many) or all(many) and not any(one)):
    raise app.UsageError("give either --hf_dir and --out_dir, or --trajectory and --out_root")
  distributed.initialize_from_flags()
  if jax.process_count() > 1:
    raise app.UsageError("conversion runs in one process; to convert a model larger than one "
                         "device, pass --mesh_shape over this host's devices")
  sharding_fn = (sharding.param_sharding_fn(sharding.make_mesh(_MESH.value))
                 if _MESH.value else None)
  if all(many):
    out = convert.convert_trajectory(_TRAJECTORY.value, _OUT_ROOT.value, dtype=_DTYPE.value,
                                     overwrite=_OVERWRITE.value,
                                     allow_outside_root=_ALLOW_OUTSIDE_ROOT.value,
                                     sharding_fn=sharding_fn, compress=_COMPRESS.value)
    print(out)
    return
  t0 = time.perf_counter()
  marker = orbax_checkpoints.convert(_HF_DIR.value, _OUT_DIR.value, dtype=_DTYPE.value,
                                     overwrite=_OVERWRITE.value, sharding_fn=sharding_fn,
                                     compress=_COMPRESS.value)
  dt = time.perf_counter() - t0
  size = checkpoints.dir_bytes(_OUT_DIR.value)
  logging.info("%s -> %s: %d params as %s, %.1f MB in %.1fs (%.1f MB/s)", _HF_DIR.value,
               _OUT_DIR.value, marker["params"], marker["dtype"], size / 1e6, dt,
               size / 1e6 / max(dt, 1e-9))
  print(_OUT_DIR.value)


if __name__ == "__main__":
  app.run(main)
