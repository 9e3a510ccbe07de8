"""Scoring a trajectory: `launch/score.py --config=configs/score.py`.

The fields, one comment each, are in `trajax.stage_configs.score`.
"""
from trajax import stage_configs


def get_config():
  return stage_configs.score()
