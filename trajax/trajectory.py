"""The trajectory manifest: which checkpoints of which models, in order.

A JSON file:
  {"name": "opt-toy",                       # optional
   "root": ".",                             # optional; paths resolve against it
   "models": [
     {"name": "125m", "tokens_per_step": 524288, "params": 125239296,   # params optional
      "checkpoints": [{"step": 2000, "path": "125m/step2000"}, ...]}]}
The manifest order is the trajectory (steps must increase). `root` defaults to
the manifest's directory; a checkpoint path that resolves outside it is an
error unless `allow_outside_root=True` (a manifest from elsewhere must not send
trajax reading arbitrary files).
"""
from __future__ import annotations

import dataclasses
import json
import os

from trajax import atomic, checkpoints


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  step: int
  path: str


@dataclasses.dataclass(frozen=True)
class Model:
  name: str
  tokens_per_step: int
  checkpoints: tuple[Checkpoint, ...]
  params: int | None = None

  @property
  def steps(self) -> list[int]:
    return [c.step for c in self.checkpoints]


@dataclasses.dataclass(frozen=True)
class Trajectory:
  models: tuple[Model, ...]
  name: str = ""
  source: str = ""

  def model(self, name: str) -> Model:
    for m in self.models:
      if m.name == name:
        return m
    raise KeyError(f"{self.source}: no model named {name!r}; models: "
                   f"{[m.name for m in self.models]}")

  def problems(self) -> list[str]:
    """Checkpoints that are missing or unreadable at a glance (no weights are read)."""
    out = []
    for m in self.models:
      for c in m.checkpoints:
        if not os.path.isdir(c.path):
          out.append(f"{m.name} step {c.step}: {c.path} does not exist")
          continue
        try:
          checkpoints.check(c.path)
        except (OSError, ValueError) as e:
          out.append(f"{m.name} step {c.step}: {e}")
    return out

  def to_json(self) -> dict:
    return {
        "name": self.name, "models": [{
            "name": m.name, "tokens_per_step": m.tokens_per_step, "params": m.params,
            "checkpoints": [{"step": c.step, "path": c.path} for c in m.checkpoints]
        } for m in self.models]
    }

  def save(self, path: str) -> None:
    """Writes the manifest atomically, paths relative to its directory."""
    root = os.path.dirname(os.path.abspath(path))
    data = self.to_json()
    data["root"] = "."
    for m in data["models"]:
      for c in m["checkpoints"]:
        c["path"] = os.path.relpath(c["path"], root)
    atomic.write_json(path, data, sort_keys=False)


def _field(obj, key, typ, where):
  if not isinstance(obj, dict) or key not in obj:
    raise ValueError(f"{where}: missing field {key!r}")
  value = obj[key]
  if typ is int and isinstance(value, bool) or not isinstance(value, typ):
    raise ValueError(f"{where}: field {key!r} must be {typ.__name__}, got {value!r}")
  return value


def load(path: str, allow_outside_root: bool = False) -> Trajectory:
  """Reads and validates a manifest (see module docstring)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object with a 'models' list")
  base = os.path.dirname(os.path.abspath(path))
  root_rel = data.get("root", ".")
  if not isinstance(root_rel, str):
    raise ValueError(f"{path}: field 'root' must be str, got {root_rel!r}")
  root = os.path.realpath(os.path.join(base, root_rel))
  models, names = [], set()
  for mi, m in enumerate(_field(data, "models", list, path)):
    where = f"{path}: models[{mi}]"
    name = _field(m, "name", str, where)
    if name in names or not name or "/" in name:
      raise ValueError(f"{where}: model name {name!r} must be unique, non-empty, without '/'")
    names.add(name)
    tps = _field(m, "tokens_per_step", int, where)
    params = m.get("params")
    if params is not None and (not isinstance(params, int) or params <= 0):
      raise ValueError(f"{where}: field 'params' must be a positive int, got {params!r}")
    ckpts = []
    for ci, c in enumerate(_field(m, "checkpoints", list, where)):
      cw = f"{where}.checkpoints[{ci}]"
      step = _field(c, "step", int, cw)
      rel = _field(c, "path", str, cw)
      full = os.path.realpath(os.path.join(root, rel))
      if not allow_outside_root and os.path.commonpath([full, root]) != root:
        raise ValueError(f"{cw}: path {rel!r} resolves to {full}, outside the manifest root "
                         f"{root} (pass allow_outside_root=True to permit)")
      if ckpts and step <= ckpts[-1].step:
        raise ValueError(f"{cw}: step {step} does not follow step {ckpts[-1].step}; checkpoints "
                         f"must be listed in training order")
      ckpts.append(Checkpoint(step, full))
    if len(ckpts) == 0:
      raise ValueError(f"{where}: no checkpoints")
    models.append(Model(name, tps, tuple(ckpts), params))
  return Trajectory(tuple(models), str(data.get("name", "")), path)
