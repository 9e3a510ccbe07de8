"""Scoring a trajectory: `launch/score.py --config=configs/score.py`."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # Trajectory manifest (JSON; see trajax/trajectory.py).
  config.trajectory = ""
  # Permit checkpoint paths outside the manifest's root directory.
  config.allow_outside_root = False
  # Tokenizer directory; empty = the first checkpoint's directory.
  config.tokenizer = ""
  # Parameter dtype: "float32" or "bfloat16" (log-softmax is always float32).
  config.dtype = "float32"
  # Rows of [block_len] tokens scored per jitted call.
  config.batch_size = 8
  # Rows per chunk of the fused LM head (bounds the [chunk, vocab] float32 block); 0 = the
  # backend default (128 on CPU, 2048 on GPU/TPU).
  config.head_chunk_tokens = 0
  # Device mesh (data, fsdp, tensor) as "8,1,1" or "-1,1,1" (-1 = the rest); "" = one device.
  config.mesh_shape = ""
  # Read checkpoint k+1 in a background thread while checkpoint k is scored.
  config.prefetch = True
  # "raise" stops at a bad checkpoint; "continue" marks it failed and goes on.
  config.on_error = "raise"
  # T of the PaLM FLOPs formula recorded in the store (the models' training sequence
  # length); 0 = each model's max_position_embeddings.
  config.seq_len = 0

  config.data = ml_collections.ConfigDict()
  # Comma-separated glob(s) of .txt (one document per file) or .jsonl files.
  config.data.files = ""
  # JSONL field holding the text.
  config.data.text_key = "text"
  # Strip Project Gutenberg headers/footers from .txt files.
  config.data.gutenberg = True
  # Tokens per block including BOS (paper: 2048).
  config.data.block_len = 2048
  # Documents to take (paper: 50); 0 = all.
  config.data.max_docs = 50
  # Skip documents with fewer tokens than this.
  config.data.min_tokens = 2

  # The validation dataset, scored in the same sweep: validation perplexity (Fig. 1, and the
  # x axis of Fig. 8, 9, 12, 16) is measured on it, never on the analysed tokens themselves.
  config.validation = ml_collections.ConfigDict()
  # Subsets, comma-separated "name=glob" (a bare glob is one subset per file, named by its
  # stem, e.g. OPT's valid/{BookCorpusFair,CommonCrawl,...}.jsonl); "" = no validation data
  # (valid PPL then falls back to the analysed tokens, with a warning).
  config.validation.files = ""
  # JSONL field holding the text.
  config.validation.text_key = "text"
  # Strip Project Gutenberg headers/footers from .txt files.
  config.validation.gutenberg = True
  # Tokens per block including BOS; 0 = data.block_len.
  config.validation.block_len = 0
  # Documents per subset; 0 = all.
  config.validation.max_docs = 0
  return config
