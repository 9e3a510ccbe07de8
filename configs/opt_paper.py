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

Every figure's protocol, as a preset of each stage (the string after the colon):

  configs/opt_paper.py            Table 2 and the architectures (this module's data)
  configs/opt_paper.py:score      §3.1 / App. B.1 and §2: PG-19 50 docs x 2048 tokens; valid PPL
                                  on OPT's validation subsets (Fig. 1-4, 10-12)
  configs/opt_paper.py:trends     §3, App. B: Fig. 2 start points, subsets of Fig. 3, 4, 10, 11
  configs/opt_paper.py:decode     §4: 125M + 30B, 5-token prompts, 50 new tokens, five
                                  configurations, greedy and nucleus; corrupted opensubtitles;
                                  GPT-Neo (Fig. 7); MAUVE (Fig. 13)
  configs/opt_paper.py:decode100, :decode500     App. C.5 (Fig. 14, 15)
  configs/opt_paper.py:open_ended App. C.4, Table 4: 256-token contexts, 128 new tokens
  configs/opt_paper.py:icl        §5, App. D: the 74 tasks of Table 7, 2-shot

The paths are the user's: a manifest naming the models "125m", "1.3b", "6.7b",
"13b", "30b", "175b" with Table 2's checkpoints (`manifest` writes one from a
directory of them), PG-19's validation file, OPT's validation subsets (the
paper's "original OPT validation set"), its opensubtitles subset, GPT-Neo's
final checkpoints, BIG-bench's benchmark_tasks. Set them with flags, e.g.
`--config.data.files=valid/PG-19.jsonl`. Where the paper does not state a value
the field says so and keeps trajax's default.
"""
import os

import ml_collections

from trajax import stage_configs
from trajax.analysis import bigbench_tasks

PRESETS = ("", "score", "trends", "decode", "decode100", "decode500", "open_ended", "icl")
# The models of the paper by their printed size, as the presets name them in a manifest.
PAPER_MODELS = ("125m", "1.3b", "6.7b", "13b", "30b", "175b")
# Table 4 (App. C.4): the (large, small) pairs of p_l − p_s, next to p_l alone.
TABLE4_PAIRS = (("350m", "125m"), ("1.3b", "125m"), ("1.3b", "350m"), ("2.7b", "125m"), ("2.7b",
                                                                                         "350m"))

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


def get_config(preset: str = ""):
  """Table 2 (no preset) or the paper's protocol for one stage (see the module doc)."""
  if preset not in PRESETS:
    raise ValueError(f"configs/opt_paper.py: unknown preset {preset!r}; expected one of "
                     f"{PRESETS}")
  if preset:
    return globals()[f"_{preset}"]()
  return _table2()


def _table2():
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


def manifest(root: str, path_format: str = "{name}/step{step}") -> dict:
  """A trajectory manifest of the six models with Table 2's checkpoints under `root`.

  Args:
    root: directory of the checkpoints.
    path_format: a checkpoint's path under `root` from its model name and step.
  Returns:
    The manifest as a dict (`json.dump` it for `--config.trajectory`). A checkpoint
    of Table 2 missing under `root` is a FileNotFoundError listing every missing one.
  """
  t2 = _table2()
  models, missing = [], []
  for key in t2.paper_models:
    m = t2.models[key]
    ckpts = [
        {"step": s, "path": path_format.format(name=m.name, step=s)} for s in m.checkpoint_steps
    ]
    missing += [c["path"] for c in ckpts if not os.path.isdir(os.path.join(root, c["path"]))]
    models.append({"name": m.name, "tokens_per_step": m.tokens_per_step, "checkpoints": ckpts})
  if missing:
    raise FileNotFoundError(f"{root}: {len(missing)} checkpoint(s) of Table 2 missing, e.g. "
                            f"{missing[:3]}")
  return {"name": "opt-paper", "root": os.path.abspath(root), "models": models}


def _score():
  config = stage_configs.score()
  # App. B.1: "the Gutenberg PG-19 ... validation subset ... contains 50 lines of texts" (a
  # JSONL file of OPT's validation set, one document per line; the user's path).
  config.data.files = ""
  config.data.gutenberg = False
  # App. B.1: "we take the first 2048 tokens of each line": 50 x 2047 = 102,350 pairs.
  config.data.block_len = 2048
  config.data.max_docs = 50
  # §2: valid PPL "on the entire validation set", "the original OPT validation set" of
  # several domains; App. B.5: "the aggregated perplexity of a number of subsets". One subset
  # per file of OPT's valid/ folder (the user's path, e.g. "valid/*.jsonl").
  config.validation.files = ""
  config.validation.gutenberg = False
  # Not stated: whole documents' first 2048 tokens (each model's context), every document.
  config.validation.block_len = 2048
  config.validation.max_docs = 0
  # Training sequence length T of the PaLM FLOPs formula (footnote 3, Chowdhery et al.).
  config.seq_len = 2048
  return config


def _trends():
  config = stage_configs.trends()
  # Fig. 2: "the trend is estimated after p% percentage of training"; the p values are not
  # stated in the text: every 10%.
  config.fractions = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  # Fig. 3, 4: "after 10% of training"; §3.2 text: upward tokens "identified after 20%
  # training of the largest model (175B)" (Fig. 4's caption says 10%: both are computed);
  # Fig. 10, 11: 10% and 40%.
  config.subset_fractions = (0.1, 0.2, 0.4)
  # Fig. 3/4 left and Fig. 10: each model's own tokens ("self"); middle and right: chosen by
  # 1.3B and 175B; Fig. 11 (App. B.4): by 6.7B, 13B and 30B.
  config.selectors = ("self", "1.3b", "175b", "6.7b", "13b", "30b")
  config.categories = ("stagnated", "upward", "downward", "none")
  # Eq. 1: PPL_i / PPL_j = α + β (i − j), x = the checkpoint index.
  config.x = "index"
  # §3.1: "Starting from any intermediate checkpoint after p% of training".
  config.start_rule = "at_or_after"
  # Footnote 3: "We estimate FLOPs following Chowdhery et al. (2022)".
  config.flops_method = "palm"
  # Table 3: "after 10% training of 1.3B model" (its right half, 175B, by
  # --config.token_view_model=175b).
  config.token_view_model = "1.3b"
  config.token_view_fraction = 0.1
  return config


def _decode():
  config = stage_configs.decode()
  # §4.2: "We decode sequences with two models, 125M and 30B".
  config.small_model = "125m"
  config.large_model = "30b"
  # §4.2, Fig. 6: p_s − p_l, p_s, p_s + p_l, p_l, p_l − p_s.
  config.configs = ("ps-pl", "ps", "ps+pl", "pl", "pl-ps")
  # §4.2: "We try greedy search and nucleus sampling (Holtzman et al., 2019)".
  config.methods = ("greedy", "nucleus")
  # §4.2: "the first 5 tokens of a subset of validation documents as prompts and generate
  # 50 tokens"; the subset's size is not stated (every document of data.files, the user's
  # path to OPT validation documents, minus those held out below: set data.max_docs).
  config.prompt_tokens = 5
  config.max_new_tokens = 50
  config.data.gutenberg = False
  # top_p is stated only for App. C.4 ("nucleus sampling (p = 0.9)"); §4 does not say.
  config.top_p = 0.9
  config.temperature = 1.0
  # Fig. 6 row 2: "perplexity trajectory evaluated over intermediate checkpoints".
  config.score_all_checkpoints = True
  config.seq_len = 2048
  # App. C.1: "We corrupt texts from the opensubtitle subset of the validation set by
  # replacing p% tokens"; §4.1: 20%, 40%, 60%, 80%, 100%; "max length ... 100".
  config.corrupted.enabled = True
  config.corrupted.fractions = (0.2, 0.4, 0.6, 0.8, 1.0)
  config.corrupted.max_length = 100
  config.corrupted.data.files = ""  # the user's opensubtitles validation file
  config.corrupted.data.gutenberg = False
  # Fig. 7: "final GPT Neo checkpoints" (125M, 1.3B, 2.7B; the user's manifest).
  config.cross_family_trajectory = ""
  config.cross_family_all_checkpoints = False
  # App. C.3, Fig. 13: MAUVE (Pillutla et al., 2021) with mauve-text's defaults; the paper's
  # features are GPT-2 large's, trajax's the large decoding model's (30B).
  config.mauve.enabled = True
  return config


def _decode100():
  config = _decode()
  # App. C.5: "generate longer sequences up to 100 and 500 tokens" (Fig. 14, 15).
  config.max_new_tokens = 100
  return config


def _decode500():
  config = _decode()
  config.max_new_tokens = 500
  return config


def _open_ended():
  config = _decode()
  # App. C.4: "generate sequences with a maximum length of 128 given contexts that have 256
  # tokens", "based on either p_l − p_s or p_l with greedy decoding or nucleus sampling
  # (p = 0.9)", scored by MAUVE (Table 4); the pairs are TABLE4_PAIRS (one run each:
  # --config.large_model, --config.small_model).
  config.prompt_tokens = 256
  config.max_new_tokens = 128
  config.configs = ("pl", "pl-ps")
  config.methods = ("greedy", "nucleus")
  config.top_p = 0.9
  config.large_model, config.small_model = TABLE4_PAIRS[1]
  config.score_all_checkpoints = False
  config.corrupted.enabled = False
  return config


def _icl():
  config = stage_configs.icl()
  # App. D.1: multiple-choice tasks with "fewer than 1000 evaluation examples", Table 7 (74).
  config.task_names = bigbench_tasks.TABLE7
  # §5.1: "We focus on the 2-shot setting", "randomly select two in-context examples
  # (excluding the evaluation example itself)"; the seed is not stated.
  config.shots = 2
  # App. D.1: "the default set of each BIG-Bench dataset": every example.
  config.max_examples = 0
  # §5.1: "the candidate ... that has the highest probability normalized over its length"
  # (length in tokens: not stated).
  config.normalization = "tokens"
  config.flops_method = "palm"
  config.seq_len = 2048
  return config
