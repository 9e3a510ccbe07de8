"""Sequence-level generation (paper §4): `launch/decode.py --config=configs/decode.py`."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # Trajectory manifest (JSON; see trajax/trajectory.py).
  config.trajectory = ""
  # Permit checkpoint paths outside the manifest's root directory.
  config.allow_outside_root = False
  # Tokenizer directory; empty = the large model's final checkpoint directory.
  config.tokenizer = ""
  # Parameter dtype: "float32" or "bfloat16" (logits and sampling are always float32).
  config.dtype = "float32"
  # Device mesh (data, fsdp, tensor) as "8,1,1" or "-1,1,1" (-1 = the rest); "" = one device.
  # Scoring splits batches over `data` (score_batch_size must be a multiple of it).
  config.mesh_shape = ""
  # Model decoding as p_s; empty = the smallest model of the manifest (paper: 125m).
  config.small_model = ""
  # Model decoding as p_l; empty = the largest model of the manifest (paper: 30b).
  config.large_model = ""
  # Configurations of (λ_small, λ_large), names from trajax.sampling.CONFIGS.
  config.configs = ("ps-pl", "ps", "ps+pl", "pl", "pl-ps")
  # Decoding methods: "greedy" and/or "nucleus".
  config.methods = ("greedy", "nucleus")
  # Document tokens per prompt, after BOS (paper: 5).
  config.prompt_tokens = 5
  # New tokens per text (paper: 50; App. C.5: 100 and 500).
  config.max_new_tokens = 50
  # Nucleus mass (Holtzman et al. 2019).
  config.top_p = 0.9
  # Sampling temperature (nucleus only).
  config.temperature = 1.0
  # Seed of nucleus sampling and of the corruptions.
  config.seed = 0
  # End-of-sequence id; a row stops after emitting it (OPT: </s> = 2).
  config.eos_id = 2
  # Logits kept per model: -1 = the tokenizer's size (drops OPT's untrained pad rows
  # 50265..50271), 0 = the full head (models must then have equal vocab sizes).
  config.vocab_size = -1
  # Prompts decoded per jitted call.
  config.batch_size = 32
  # Score the texts with every checkpoint (Fig. 6 row 2) or only final ones (row 1).
  config.score_all_checkpoints = True
  # Texts per scoring call.
  config.score_batch_size = 8
  # T of the PaLM FLOPs formula (training sequence length); 0 = max_position_embeddings.
  config.seq_len = 0
  # Workdir whose store/ (from launch/score.py) gives validation PPL for Fig. 16 ("": this
  # workdir; no store there: no Fig. 16).
  config.store_dir = ""
  # Rows of the Table-1-style example table (prompts shown).
  config.table_prompts = 3

  config.data = ml_collections.ConfigDict()
  # Comma-separated glob(s) of .txt (one document per file) or .jsonl files.
  config.data.files = ""
  # JSONL field holding the text.
  config.data.text_key = "text"
  # Strip Project Gutenberg headers/footers from .txt files.
  config.data.gutenberg = True
  # Documents giving prompts; 0 = all.
  config.data.max_docs = 0

  config.corrupted = ml_collections.ConfigDict()
  # Run the corrupted-text experiment (§4.1, Fig. 5 left) with final checkpoints.
  config.corrupted.enabled = True
  # Shares of tokens replaced by random ids (paper: 0.2 .. 1.0).
  config.corrupted.fractions = (0.2, 0.4, 0.6, 0.8, 1.0)
  # Tokens kept per document before corrupting (paper: 100).
  config.corrupted.max_length = 100
  # Documents corrupted; 0 = all.
  config.corrupted.max_docs = 0
  return config
