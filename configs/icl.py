"""BIG-bench 2-shot evaluation of every checkpoint: `launch/icl.py --config=configs/icl.py`."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # Trajectory manifest (JSON; see trajax/trajectory.py).
  config.trajectory = ""
  # Permit checkpoint paths outside the manifest's root directory.
  config.allow_outside_root = False
  # BIG-bench benchmark_tasks-like directory: one <task>/task.json per task.
  config.tasks_dir = ""
  # Tasks to evaluate (names of sub-directories of tasks_dir); empty = all of them.
  config.task_names = ()
  # In-context examples per prompt (the paper: 2).
  config.shots = 2
  # Seeds the shot draws and the appended-choice permutation; same seed, same prompts.
  config.seed = 42
  # Queries per task drawn at random, split over subtasks as BIG-bench does; 0 = all (default set).
  config.max_examples = 0
  # Option score for the prediction: log-prob divided by "tokens" (the paper), "chars",
  # "bytes", or "none" (raw sum).
  config.normalization = "tokens"
  # How options are scored: "auto" (each example's shared prompt run once into a KV cache and
  # its options scored against it, or whole rows packed, whichever the cost model finds cheaper),
  # "reuse" or "pack" (always that), or "rows" (every option its own full row: the reference).
  config.method = "auto"
  # Tokens per call of "auto"/"reuse"/"pack" (prefill tokens, packed-row tokens); 0 = the
  # backend's default (trajax.analysis.icl.plan.BATCH_TOKENS).
  config.batch_tokens = 0
  # Option rows (prompt + option sequences) per jitted call of method "rows".
  config.batch_size = 16
  # Method "rows": padded lengths are multiples of this (one compile per length per architecture); 16 wastes
  # less padding than 64 and was 1.8x faster warm in bench/icl_bench.py (CPU, 2-shot prompts).
  config.pad_to_multiple = 16
  # Rows per chunk of the fused LM head (bounds the [chunk, vocab] float32 block); 0 = the
  # backend default (128 on CPU, 2048 on GPU/TPU).
  config.head_chunk_tokens = 0
  # Device mesh (data, fsdp, tensor) as "8,1,1" or "-1,1,1" (-1 = the rest); "" = one device.
  # Rows per call are rounded up to a multiple of the data axis.
  config.mesh_shape = ""
  # Read checkpoint k+1 in a background thread while checkpoint k is scored.
  config.prefetch = True
  # Tokenizer directory; empty = the first checkpoint's directory.
  config.tokenizer = ""
  # Workdir of a scored store (launch/score.py) for validation PPL; empty = --workdir.
  # Without a store the figures against validation PPL are skipped (FLOPs only).
  config.store_dir = ""
  # Parameter dtype: "float32" or "bfloat16" (log-softmax is always float32).
  config.dtype = "float32"
  # Training FLOPs: "palm" (6N + 12LHQT per token, Chowdhery et al. 2022, the paper) or "6nd".
  config.flops_method = "palm"
  # T of the PaLM formula (training sequence length); 0 = max_position_embeddings.
  config.seq_len = 0
  return config
