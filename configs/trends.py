"""The token-trend study of a scored store: `launch/trends.py --config=configs/trends.py`."""
import ml_collections


def get_config():
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
  # Mean of a subset's per-token PPLs: "arithmetic" (the paper) or "geometric".
  config.subset_mean = "arithmetic"
  # Trend regressor: "index" (checkpoint index, the paper's Eq. 1) or "log_step"
  # (log of the step, as the authors' released notebook).
  config.x = "index"
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
