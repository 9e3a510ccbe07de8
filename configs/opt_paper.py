"""The OPT family as studied by Xia et al. (2023): Table 2 and the architectures.

Training numbers are Table 2 of the paper (Appendix A), copied as printed.
Architectures are the published OPT configs (Zhang et al. 2022, HF
facebook/opt-*). ConfigDict keys cannot hold dots, so "1.3b" is `opt_1_3b`;
`name` keeps the printed size.

Batch size → tokens_per_step. Table 2 prints the batch in "M" tokens. OPT was
trained with metaseq, whose size table sets batch_size = int(x * M) with
M = 1024 * 1024 (metaseq projects/OPT opt_baselines / model size constants),
so "0.5M" is 0.5 × 2**20 = 524,288 tokens = 256 sequences × 2048 tokens. We
store batch_sequences = x × 2**20 / 2048 and tokens_per_step = batch_sequences ×
seq_len. This matches the checkpoint lists: 300B tokens / 524,288 ≈ 572K steps
for 125m, whose last evaluated checkpoint is 560K, while Table 2's rounded
"# Steps" (600K = 300B / 0.5e6) is kept in `total_steps` as printed.
"""
import ml_collections

_K = 1000
# Step lists exactly as Table 2 prints them (in thousands of steps).
_CKPT_K = {
    "125m": (2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 40, 60, 80, 100, 120, 140, 160, 200, 220, 240,
             260, 280, 300, 320, 340, 360, 380, 400, 420, 440, 460, 480, 500, 520, 540, 560),
    "1.3b": (2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 40, 60, 80, 100, 120, 140, 160, 180, 200, 220,
             240, 260),
    "6.7b": (2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140),
    "13b": (2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 42, 46, 50, 54, 58, 62, 66, 70),
    "30b": (2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 42, 46, 50, 54, 58, 62, 66, 70),
    "175b": (4, 8, 12, 16, 20, 24, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72, 76, 80, 84, 88, 92, 96,
             100, 104, 108, 112, 120, 124, 128, 132, 136, 140),
}


def _model(name, hidden_size, num_layers, num_heads, ffn_dim, word_embed_proj_dim=None,
           do_layer_norm_before=True, lr=None, batch_millions=None, total_steps_k=None):
  m = ml_collections.ConfigDict()
  # Size as the paper prints it ("125m", "1.3b", ...).
  m.name = name
  # Hugging Face hub id of the final checkpoint.
  m.hf_name = f"facebook/opt-{name}"
  # Vocabulary rows of embed_tokens (OPTConfig.vocab_size).
  m.vocab_size = 50272
  # Model width d (OPTConfig.hidden_size).
  m.hidden_size = hidden_size
  # Decoder layers L (OPTConfig.num_hidden_layers).
  m.num_layers = num_layers
  # Attention heads H; head dim Q = hidden_size // num_heads.
  m.num_heads = num_heads
  # MLP inner width (OPTConfig.ffn_dim).
  m.ffn_dim = ffn_dim
  # Learned positions (OPTConfig.max_position_embeddings); HF adds 2 offset rows.
  m.max_positions = 2048
  # Embedding width; != hidden_size only for 350m (project_in/project_out).
  m.word_embed_proj_dim = word_embed_proj_dim or hidden_size
  # Pre-LN (True) or post-LN (False, 350m only); pre-LN adds a final layer norm.
  m.do_layer_norm_before = do_layer_norm_before
  # Training sequence length T (tokens per sequence).
  m.seq_len = 2048
  # Peak learning rate, Table 2 "LR" (None: not in Table 2).
  m.lr = lr
  # Table 2 "Batch Size" in M = 2**20 tokens, as printed (None: not in Table 2).
  m.batch_millions = batch_millions
  # Sequences per optimizer step = batch_millions × 2**20 / seq_len.
  m.batch_sequences = int(batch_millions * 2**20) // 2048 if batch_millions else None
  # Tokens per optimizer step = batch_sequences × seq_len (tokens seen = step × this).
  m.tokens_per_step = m.batch_sequences * 2048 if batch_millions else None
  # Table 2 "# Steps", as printed (rounded; see the module doc).
  m.total_steps = total_steps_k * _K if total_steps_k else None
  # Table 2 "Ckpt Steps": the evaluated checkpoints, unevenly spaced, as printed.
  m.checkpoint_steps = tuple(s * _K for s in _CKPT_K[name]) if name in _CKPT_K else ()
  # Table 2 "# Ckpt" (== len(checkpoint_steps)).
  m.num_checkpoints = len(m.checkpoint_steps)
  return m


def hf_config(m) -> dict:
  """The HF `config.json` fields of a `models` entry (for `trajax.models.opt.OPTConfig`)."""
  return {
      "model_type": "opt", "vocab_size": m.vocab_size, "hidden_size": m.hidden_size,
      "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads, "ffn_dim": m.ffn_dim,
      "max_position_embeddings": m.max_positions, "word_embed_proj_dim": m.word_embed_proj_dim,
      "do_layer_norm_before": m.do_layer_norm_before
  }


def get_config():
  config = ml_collections.ConfigDict()
  # The six sizes of Table 2, in order, as keys of `models`.
  config.paper_models = ("opt_125m", "opt_1_3b", "opt_6_7b", "opt_13b", "opt_30b", "opt_175b")
  # Tokens every model was trained on (paper Appendix A: 300B, 180B unique).
  config.train_tokens = 300_000_000_000
  # Start fractions p of Fig. 2 (trend estimated after p of training).
  config.start_fractions = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  # Regressor of Eq. 1: "index" (paper) or "log_step" (authors' notebook).
  config.trend_x = "index"
  # Every published OPT size: architecture, plus Table 2 for the six studied.
  config.models = ml_collections.ConfigDict()
  # 125m: Table 2 row 1.
  config.models.opt_125m = _model("125m", 768, 12, 12, 3072, lr=6.0e-4, batch_millions=0.5,
                                  total_steps_k=600)
  # 350m: post-LN with a 512-wide embedding; not in the paper.
  config.models.opt_350m = _model("350m", 1024, 24, 16, 4096, word_embed_proj_dim=512,
                                  do_layer_norm_before=False)
  # 1.3b: Table 2 row 2.
  config.models.opt_1_3b = _model("1.3b", 2048, 24, 32, 8192, lr=2.0e-4, batch_millions=1.0,
                                  total_steps_k=300)
  # 2.7b: not in the paper.
  config.models.opt_2_7b = _model("2.7b", 2560, 32, 32, 10240)
  # 6.7b: Table 2 row 3.
  config.models.opt_6_7b = _model("6.7b", 4096, 32, 32, 16384, lr=1.2e-4, batch_millions=2.0,
                                  total_steps_k=150)
  # 13b: Table 2 row 4.
  config.models.opt_13b = _model("13b", 5120, 40, 40, 20480, lr=1.0e-4, batch_millions=4.0,
                                 total_steps_k=75)
  # 30b: Table 2 row 5.
  config.models.opt_30b = _model("30b", 7168, 48, 56, 28672, lr=1.0e-4, batch_millions=4.0,
                                 total_steps_k=75)
  # 66b: not in the paper.
  config.models.opt_66b = _model("66b", 9216, 64, 72, 36864)
  # 175b: Table 2 row 6.
  config.models.opt_175b = _model("175b", 12288, 96, 96, 49152, lr=1.2e-4, batch_millions=2.0,
                                  total_steps_k=150)
  return config
