"""BIG-bench 2-shot evaluation of every checkpoint: `launch/icl.py --config=configs/icl.py`.

The fields, one comment each, are in `trajax.stage_configs.icl`.
"""
from trajax import stage_configs


def get_config():
  return stage_configs.icl()
