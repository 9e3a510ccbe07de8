"""Shared fixtures: tiny random OPT checkpoints written by transformers itself."""
import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "faults"))  # killpoints, for every test directory
SHARED_DATA = ROOT.parent / "shared" / "data"
OPT_TOKENIZER = SHARED_DATA / "tokenizer" / "opt"

# A fault armed or traced in the shell that runs the suite (`TRAJAX_FAULT=kill@...` left
# over from a manual try) would kill or slow every test that reaches a fault point, in
# this process and in every stage a test starts: the suite runs with none; fault tests
# arm their own, per child process.
for _name in ("TRAJAX_FAULT", "TRAJAX_FAULT_TRACE"):
  os.environ.pop(_name, None)

# One persistent XLA compilation cache per test session, shared with every stage a test
# starts as a subprocess (they inherit the environment): a fault test runs the same stage
# once clean and once per kill point, and each run would otherwise compile the same programs
# again. Fresh per session (no state carried between runs of the suite) and removed at its
# end (by the process that made it: xdist workers inherit it); a cached executable is the
# same program, so no result depends on it. An entry read while another process writes it
# fails to decompress and JAX compiles instead (a warning). A directory set by the caller
# is used as is.
_JAX_CACHE_OWNED = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _JAX_CACHE_OWNED:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="trajax-test-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _JAX_CACHE_OWNED:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# Only catches a hung subprocess (a deadlock): no healthy run a test starts comes near it,
# however loaded the machine, so no test outcome depends on how long a run takes.
HANG_GUARD_S = 3600

# Property tests never depend on time or on earlier runs: no per-example deadline (200 ms by
# default: a loaded machine misses it), no "too slow" health check (it times data
# generation), the same examples every run (derandomize) and no example database.
settings.register_profile(
    "trajax", deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("trajax")


@contextlib.contextmanager
def reserved_port():
  """A localhost port no other program can take while the block runs; yields its number.

  Picking a free port and closing it before the coordinator binds it is a race
  (another program, or a concurrent test run, may take it in between). Instead
  the port stays bound here, with SO_REUSEPORT, for the whole test: the kernel
  hands it to no one else (`bind(0)` and outgoing connections skip a port in
  use, and a plain bind of it fails), while JAX's coordinator, a gRPC server,
  which binds with SO_REUSEPORT as the same user, may share it. This socket never
  listens, so every connection reaches the coordinator.
  """
  with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]


# A tiny pre-LN OPT; tests override fields to get each variant.
TINY = dict(vocab_size=96, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=4,
            max_position_embeddings=64)


def hf_opt(seed=0, **overrides):
  """A random transformers OPTForCausalLM (eval mode, eager attention)."""
  import torch
  from transformers import OPTConfig, OPTForCausalLM
  cfg = dict(TINY, **overrides)
  torch.manual_seed(seed)
  model = OPTForCausalLM(OPTConfig(**cfg, attn_implementation="eager")).eval()
  # Random (not default-initialised) layer norms so their parameters matter in parity tests.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def save_hf(model, path, **kwargs):
  model.save_pretrained(path, **kwargs)
  return str(path)


def torch_logprobs(model, ids_bt, mask_bt):
  """Reference per-token log-probs from transformers, NaN where trajax puts NaN."""
  import torch
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids_bt, dtype=torch.long),
                   attention_mask=torch.tensor(mask_bt.astype(np.int64))).logits.double()
  lp = torch.log_softmax(logits,
                         -1)[:, :-1].gather(-1, torch.tensor(ids_bt[:, 1:, None],
                                                             dtype=torch.long))[..., 0].numpy()
  out = np.concatenate([np.full((ids_bt.shape[0], 1), np.nan), lp], axis=1)
  out[:, 1:][~(mask_bt[:, 1:] & mask_bt[:, :-1])] = np.nan
  return out


@pytest.fixture
def tiny_ckpt(tmp_path):
  """Factory: a saved tiny OPT checkpoint directory; returns (path, torch model)."""
  def make(name="ckpt", seed=0, save_kwargs=None, **overrides):
    model = hf_opt(seed, **overrides)
    path = save_hf(model, tmp_path / name, **(save_kwargs or {}))
    return path, model

  return make


def write_manifest(path, models):
  """models: {name: (tokens_per_step, [(step, ckpt_dir), ...])}."""
  root = os.path.dirname(path)
  data = {
      "models": [{
          "name": n, "tokens_per_step": tps,
          "checkpoints": [{"step": s, "path": os.path.relpath(p, root)} for s, p in ckpts]
      } for n, (tps, ckpts) in models.items()]
  }
  with open(path, "w") as f:
    json.dump(data, f)
  return str(path)


# A small OPT with OPT's real vocabulary, for sweeps over text tokenized by OPT's tokenizer.
SWEEP_MODEL = dict(vocab_size=50272, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                   num_attention_heads=2, max_position_embeddings=256)


def sweep_inputs(tmp_path, tiny_ckpt, n_ckpts):
  """A one-model trajectory of `n_ckpts` random checkpoints and 8 documents to score.

  Returns:
    (manifest path, glob of the documents).
  """
  ckpts = []
  for k in range(n_ckpts):
    path, _ = tiny_ckpt(f"m/step{k + 1}", seed=k, **SWEEP_MODEL)
    ckpts.append(((k + 1) * 10, path))
  docs = tmp_path / "docs"
  docs.mkdir()
  for i in range(8):
    (docs / f"{i}.txt").write_text(f"Document {i}. " + "The river runs past the old mill. " * 40)
  return write_manifest(str(tmp_path / "traj.json"), {"m": (100, ckpts)}), str(docs / "*.txt")


@contextlib.contextmanager
def held_workdir(path):
  """Inside the block another live process holds the workdir lock of `path`.

  The holder claims the workdir, says so on stdout, and waits on its stdin: it
  drops the lock when the block ends (stdin closed) or when the test kills it.
  No sleep: the claim is reported by the holder itself.

  Yields:
    The holder (`subprocess.Popen`), e.g. to read its pid or SIGKILL it.
  """
  holder = subprocess.Popen([
      sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
      "from trajax import workdir; cm = workdir.claim(sys.argv[2]); cm.__enter__();"
      "print('held', flush=True); sys.stdin.read()",
      str(ROOT),
      str(path)
  ], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    yield holder
  finally:
    holder.stdin.close()  # EOF: a live holder exits and drops the lock
    holder.wait()
    holder.stdout.close()


def study_cmd(workdir) -> list[str]:
  """`launch/study.py` on the toy config's tiny preset (what `make demo` runs, made small)."""
  return [
      sys.executable,
      str(ROOT / "launch" / "study.py"), f"--config={ROOT}/configs/toy.py:tiny",
      f"--workdir={workdir}"
  ]


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
  """The tiny toy study, run once per session by `launch/study.py`, its fault points traced.

  Shared by tests/test_study.py, tests/test_report.py and the study's kill test (its
  clean reference): one training of the toy family serves all. Tests only read it
  (copy it to rerun it). Under pytest-xdist the workers share one run: the first to
  take the lock runs it, the others wait on the lock (no clock) and read it.

  Returns:
    (workdir, the names of the `trajax.faults` points the run passed, in order).
  """
  import fcntl  # pylint: disable=import-outside-toplevel
  import killpoints  # pylint: disable=import-outside-toplevel
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the session's directory, above every worker's own
  root = base / "tiny_study"
  workdir, trace, done = root / "study", root / "trace.txt", root / "DONE"
  with open(base / "tiny_study.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(root, ignore_errors=True)  # a worker that failed midway left a partial run
      root.mkdir()
      points = killpoints.traced_run(study_cmd(workdir), trace)
      done.write_text(json.dumps(points))
  return workdir, json.loads(done.read_text())


@pytest.fixture(scope="session")
def toy_study(tiny_study):
  """The session's tiny study as (workdir, report path, the configs/toy.py module)."""
  from configs import toy
  workdir, _ = tiny_study
  return str(workdir), os.path.join(workdir, "report.html"), toy
