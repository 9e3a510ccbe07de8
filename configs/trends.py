"""The token-trend study of a scored store: `launch/trends.py --config=configs/trends.py`.

The fields, one comment each, are in `trajax.stage_configs.trends`.
"""
from trajax import stage_configs


def get_config():
  return stage_configs.trends()
