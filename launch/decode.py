"""Two-model generation, scoring, corrupted texts, MAUVE and another family's scores (paper §4).

  python launch/decode.py --config=configs/decode.py \
      --config.trajectory=runs/opt.json --config.data.files='pg19/*.txt' --workdir=out/decode

The paper's protocol: `--config=configs/opt_paper.py:decode` (125M + 30B, Fig. 5-7, 13),
with `--config.corrupted.data.files=` OPT's opensubtitles validation file and
`--config.cross_family_trajectory=` a manifest of GPT-Neo's final checkpoints (Fig. 7).
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
