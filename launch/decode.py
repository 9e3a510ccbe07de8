"""Two-model generation, scoring and corrupted texts (paper §4) over a trajectory.

  python launch/decode.py --config=configs/decode.py \
      --config.trajectory=runs/opt.json --config.data.files='pg19/*.txt' --workdir=out/decode
"""

from absl import app, flags
from ml_collections import config_flags

from trajax import distributed
from trajax.analysis import decode_study

_CONFIG = config_flags.DEFINE_config_file("config", None, "Decoding config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  distributed.initialize_from_flags()
  for name, path in decode_study.run(_CONFIG.value, _WORKDIR.value).items():
    print(f"{name}\t{path}")


if __name__ == "__main__":
  app.run(main)
