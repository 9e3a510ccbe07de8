"""The embedded toy study, end to end: `make demo` runs this.

  python launch/study.py --config=configs/toy.py --workdir=demo_out
  python launch/study.py --config=configs/toy.py:tiny --workdir=/tmp/tiny   # seconds
"""
import os

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from trajax import distributed
from trajax.toy import study

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config (configs/toy.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; a rerun resumes.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  distributed.initialize_from_flags()
  if not distributed.is_writer():  # the toy study trains and analyses on one host
    logging.info("process %d: the toy study runs on process 0", jax.process_index())
    return
  path = study.run(_CONFIG.value, os.path.abspath(_WORKDIR.value))
  print(f"report: {path}")


if __name__ == "__main__":
  app.run(main)
