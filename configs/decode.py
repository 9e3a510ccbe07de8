"""Sequence-level generation (paper §4): `launch/decode.py --config=configs/decode.py`.

The fields, one comment each, are in `trajax.stage_configs.decode`.
"""
from trajax import stage_configs


def get_config():
  return stage_configs.decode()
