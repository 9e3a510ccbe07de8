"""The default config of every stage, as `ml_collections.ConfigDict`s.

`configs/{score,trends,decode,icl}.py` return these, and `configs/toy.py` builds
the toy study's stages on them, by a plain import (no config file loads another).
One comment above each field says what it means.
"""
import ml_collections


def score() -> ml_collections.ConfigDict:
  """Scoring a trajectory: `launch/score.py --config=configs/score.py`."""
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


def trends() -> ml_collections.ConfigDict:
  """The token-trend study of a scored store: `launch/trends.py --config=configs/trends.py`."""
  config = ml_collections.ConfigDict()
  # Workdir holding the result store (its store/ folder); empty = --workdir itself.
  config.store_dir = ""
  # Start fractions p of the trend window for Fig. 2 (shares vs start); a fraction
  # whose window has < 3 checkpoints is skipped for that model, and logged.
  config.fractions = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  # Start fractions at which token subsets are selected (Fig. 3/4: 10%; Fig. 10/11: 10%, 40%).
  config.subset_fractions = (0.1, 0.4)
  # Models that select the subsets: a model name, "smallest", "largest", or "self"
  # (each model selects its own tokens: the left panels of Fig. 3/4, and Fig. 10).
  config.selectors = ("self", "smallest", "largest")
  # Categories to select: any of "stagnated", "upward", "downward", "none".
  config.categories = ("stagnated", "upward", "downward", "none")
  # "Perplexity of the selected tokens" (Fig. 3, 4, 10-12): "geometric" = exp(mean NLL over
  # the subset), a perplexity in the paper's own sense (Valid PPL is exp of a mean NLL too);
  # "arithmetic" = the mean of the tokens' perplexities (dominated by a few huge values).
  config.subset_mean = "geometric"
  # Trend regressor: "index" (checkpoint index, the paper's Eq. 1) or "log_step"
  # (log of the step, as the authors' released notebook).
  config.x = "index"
  # Start checkpoint for "after p% of training": "at_or_after" (the first checkpoint at or
  # after p% of the model's last evaluated step, which counts as 100%; the paper, §3) or
  # "nearest" (the checkpoint nearest to it).
  config.start_rule = "at_or_after"
  # Training FLOPs: "palm" (6N + 12LHQT per token, Chowdhery et al. 2022, the paper) or "6nd".
  config.flops_method = "palm"
  # Series per chunk of the vectorised trend fit (bounds its extra memory).
  config.chunk_size = 16384
  # Model whose categories colour the Table 3 token view ("smallest", "largest" or a name).
  config.token_view_model = "largest"
  # Start fraction of the token view's categories (Table 3: 10%).
  config.token_view_fraction = 0.1
  # Index of the block (document) shown in the token view.
  config.token_view_block = 0
  # Tokenizer directory for the token view; empty = the first checkpoint's directory.
  config.tokenizer = ""
  return config


def decode() -> ml_collections.ConfigDict:
  """Sequence-level generation (paper §4): `launch/decode.py --config=configs/decode.py`."""
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
  # Another family's manifest whose final checkpoints also score the texts (Fig. 7: OPT's
  # texts under GPT-Neo 125M, 1.3B, 2.7B); "" = none. The texts are carried over as
  # characters and re-encoded by that family's tokenizer (trajax.analysis.cross_family).
  config.cross_family_trajectory = ""
  # Its tokenizer directory; "" = its largest model's final checkpoint directory.
  config.cross_family_tokenizer = ""
  # Score every checkpoint of the other family (a trajectory), not only the final ones.
  config.cross_family_all_checkpoints = False

  # MAUVE of the texts against the documents' own continuations (App. C.3 Fig. 13, C.4
  # Table 4), with mauve-text's settings (trajax.analysis.mauve).
  config.mauve = ml_collections.ConfigDict()
  config.mauve.enabled = True
  # Checkpoint whose last-token final hidden states are the features (it must use the
  # decoding tokenizer); "" = the large model's final checkpoint.
  config.mauve.feature_model = ""
  # k-means clusters; 0 = mauve-text's "auto": max(2, round(min(texts) / 10)).
  config.mauve.num_buckets = 0
  # PCA keeps the leading components explaining this share of the variance.
  config.mauve.explained_variance = 0.9
  # k-means restarts (the lowest objective kept) and Lloyd iterations per restart.
  config.mauve.num_redo = 5
  config.mauve.max_iter = 500
  # The constant c of the divergence curve exp(-c KL).
  config.mauve.scaling = 5.0
  # Seed of the k-means starts (mauve-text's default 25).
  config.mauve.seed = 25

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
  # The corpus corrupted (paper App. C.1: the opensubtitles subset of OPT's validation set),
  # apart from the prompt documents.
  config.corrupted.data = ml_collections.ConfigDict()
  # Comma-separated glob(s) of .txt or .jsonl files; "" = the documents of data.files that
  # give no prompt (those after the first data.max_docs prompts; data.max_docs must then
  # leave some).
  config.corrupted.data.files = ""
  # JSONL field holding the text.
  config.corrupted.data.text_key = "text"
  # Strip Project Gutenberg headers/footers from .txt files.
  config.corrupted.data.gutenberg = True
  return config


def icl() -> ml_collections.ConfigDict:
  """BIG-bench 2-shot evaluation of every checkpoint: `launch/icl.py --config=configs/icl.py`."""
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
  # How options are scored: "auto" (per example, whichever the cost model finds cheapest of:
  # "tree", its prompt once and its options' tokens after it, packed with other examples;
  # "reuse", its prompt run once into a KV cache and its options scored against it; "pack",
  # whole rows packed), "tree", "reuse" or "pack" (always that), or "rows" (every option its
  # own full row: the reference).
  config.method = "auto"
  # Tokens per call of "auto"/"tree"/"reuse"/"pack" (prefill or packed-row tokens); 0 = the
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
