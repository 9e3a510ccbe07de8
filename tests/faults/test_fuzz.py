"""Fuzzed manifests, safetensors headers and truncations: clear errors, never a crash."""
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from trajax import safetensors_io, trajectory

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from([
            "models", "name", "tokens_per_step", "checkpoints", "step", "path", "params", "root",
            "x"
        ]), children, max_size=5), max_leaves=20)

SEEN = {"manifests": 0, "headers": 0, "truncations": 0}


@settings(max_examples=150)  # deadline, health checks, seed: the conftest profile
@given(doc=json_values)
def test_fuzzed_manifest_gives_value_error_or_loads(tmp_path, doc):
  SEEN["manifests"] += 1
  path = tmp_path / "m.json"
  path.write_text(json.dumps(doc))
  try:
    traj = trajectory.load(str(path))
  except ValueError as e:
    assert str(path) in str(e)  # the error names the file
  else:
    assert all(m.checkpoints for m in traj.models)


@settings(max_examples=150)  # deadline, health checks, seed: the conftest profile
@given(header=json_values, extra=st.binary(max_size=64))
def test_fuzzed_safetensors_header_is_rejected_cleanly(tmp_path, header, extra):
  SEEN["headers"] += 1
  blob = json.dumps(header).encode()
  path = tmp_path / "w.safetensors"
  path.write_bytes(struct.pack("<Q", len(blob)) + blob + extra)
  try:
    f = safetensors_io.SafetensorsFile(path)
  except ValueError as e:
    assert str(path) in str(e)
  else:
    for k in f.keys():
      assert f.read(k).nbytes <= len(extra)


def test_every_truncation_of_a_real_file_is_named(tmp_path):
  tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int64)}
  good = tmp_path / "good.safetensors"
  safetensors_io.save(tensors, good)
  raw = good.read_bytes()
  for cut in range(0, len(raw)):
    SEEN["truncations"] += 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=str(bad)):
      safetensors_io.SafetensorsFile(bad)


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [-1], "data_offsets": [0, -4]},
    {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]},
    {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]},
    {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]},
    {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]},
])
def test_hostile_header_entries(tmp_path, entry):
  blob = json.dumps({"t": entry}).encode()
  path = tmp_path / "h.safetensors"
  path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 64)
  with pytest.raises(ValueError, match=rf"{path}: tensor 't'"):
    safetensors_io.SafetensorsFile(path)


bigbench_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=True) |
    st.text(max_size=8), lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from([
            "examples", "input", "target_scores", "target", "task_prefix", "example_input_prefix",
            "example_output_prefix", "choice_prefix", "append_choices_to_input",
            "few_shot_example_separator", "name", "metrics", "preferred_score", "yes", "no"
        ]), children, max_size=4), max_leaves=16)


@settings(max_examples=200)  # deadline, health checks, seed: the conftest profile
@given(doc=bigbench_values)
def test_fuzzed_bigbench_task_gives_value_error_or_loads(tmp_path, doc):
  """BIG-bench JSON with missing or wrong-typed fields: an error naming the file, or a task."""
  from trajax.analysis.icl import bigbench, prompts
  SEEN["bigbench"] = SEEN.get("bigbench", 0) + 1
  task_dir = tmp_path / "fuzz_task"
  task_dir.mkdir(exist_ok=True)
  (task_dir / "task.json").write_text(json.dumps(doc))
  try:
    task = bigbench.load_task(task_dir)
  except ValueError as e:
    assert "task.json" in str(e)
  else:
    for part in task.parts:
      task_prompts = prompts.make_prompts(part, shots=2, seed=0)
      assert all(p.options for p in task_prompts)


def test_zz_summary():  # runs last in this file: the counts of cases tried
  print(f"\nfuzz cases tried: {SEEN}")
  assert SEEN["truncations"] > 100 and SEEN["bigbench"] == 200
