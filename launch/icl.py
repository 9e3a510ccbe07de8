"""BIG-bench k-shot evaluation of every checkpoint of a trajectory: results, figures, summary.

  python launch/icl.py --config=configs/icl.py --config.trajectory=runs/opt.json \
      --config.tasks_dir=../shared/data/bigbench --workdir=out/
"""
import os

from absl import app, flags
from ml_collections import config_flags

from trajax import distributed
from trajax.analysis.icl import study as icl_study

_CONFIG = config_flags.DEFINE_config_file("config", None, "ICL study config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (icl/ is written here).")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  distributed.initialize_from_flags()
  summary = icl_study.run(_CONFIG.value, _WORKDIR.value)
  for name in summary["models"]:
    acc = summary["final_accuracy"].get(name)
    if acc is not None:
      print(f"{name}\tstep {summary['final_step'][name]}\tmean accuracy {acc:.4f}\t"
            f"chance {summary['final_chance'][name]:.4f}\t({summary['n_tasks']} tasks)")
  print(os.path.join(_WORKDIR.value, "icl"))


if __name__ == "__main__":
  app.run(main)
