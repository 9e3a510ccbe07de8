"""Builds a trajectory manifest from a local Hugging Face cache of one run's revisions.

  python launch/manifest.py --config=configs/trajectories.py:olmo-1b \\
      --cache=~/.cache/huggingface/hub --out=runs/olmo-1b.json
  python launch/manifest.py --config=configs/trajectories.py:olmo-2-1b --config.ingredient=1 ...
  python launch/manifest.py --config=configs/trajectories.py:amber --tokens_per_step=N ...

Missing revisions, identical weights and token counts that disagree with the
preset are logged; the manifest is ready for launch/score.py.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trajax import revisions  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/trajectories.py preset.")
_CACHE = flags.DEFINE_string("cache", None, "The Hugging Face hub cache directory.")
_OUT = flags.DEFINE_string("out", None, "The manifest JSON to write.")
_REPOS = flags.DEFINE_list("repos", None, "Repos to include (default: the preset's).")
_TOKENS = flags.DEFINE_integer("tokens_per_step", None, "Overrides the preset's.")
_NO_HASH = flags.DEFINE_bool("no_hash", False, "Skip hashing weights (no duplicate check).")


def main(argv):
  del argv
  if not (_CACHE.value and _OUT.value):
    raise app.UsageError("--cache and --out are required")
  config = _CONFIG.value
  preset = revisions.preset_from_config(config)
  report = revisions.build_manifest(os.path.expanduser(_CACHE.value), _REPOS.value or config.repos,
                                    _OUT.value, preset, ingredient=config.ingredient or None,
                                    tokens_per_step=_TOKENS.value, hash_weights=not _NO_HASH.value)
  for m in report.trajectory.models:
    logging.info("%s: %d checkpoints, steps %d..%d, %d parameters", m.name, len(m.checkpoints),
                 m.steps[0], m.steps[-1], m.params)
  print(_OUT.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
