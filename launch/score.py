"""Scores every checkpoint of a trajectory: per-token log-probs into a result store.

  python launch/score.py --config=configs/score.py \
      --config.trajectory=runs/opt.json --config.data.files='pg19/*.txt' --workdir=out/
"""

from absl import app, flags
import jax
from ml_collections import config_flags

from trajax import distributed, sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "Scoring config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (the store lives here).")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  distributed.initialize_from_flags()
  reader = sweep.run(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() != 0:
    return
  for m in reader.models:
    for step, ppl in zip(reader.done_steps(m), reader.valid_ppl(m)):
      print(f"{m}\tstep {step}\tvalid PPL {ppl:.4f}")


if __name__ == "__main__":
  app.run(main)
