"""Token-trend study of a scored store: figures, token view and summary.json.

  python launch/trends.py --config=configs/trends.py --workdir=out/
"""
import os

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from trajax import distributed
from trajax.analysis import token_study

_CONFIG = config_flags.DEFINE_config_file("config", None, "Trend study config file.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (trends/ is written here; the store is read "
    "from here unless config.store_dir is set).")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  distributed.initialize_from_flags()
  if not distributed.is_writer():  # host-side analysis of the store: one process
    logging.info("process %d: the trend study runs on process 0", jax.process_index())
    return
  summary = token_study.run(_CONFIG.value, _WORKDIR.value)
  for name in summary["models"]:
    shares = summary["shares_at_10pct"][name] or {}
    print(f"{name}\tfinal valid PPL {summary['final_valid_ppl'][name]:.4f}\tafter 10%: " +
          ", ".join(f"{k} {v:.1f}%" for k, v in shares.items() if v is not None))
  print(f"larger models reach lower final PPL: {summary['larger_models_lower_final_ppl']}")
  print(os.path.join(_WORKDIR.value, "trends"))


if __name__ == "__main__":
  app.run(main)
