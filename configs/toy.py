"""The toy study: a family of small OPT models trained on a synthetic world.

`launch/study.py --config=configs/toy.py --workdir=out` (the full demo), or
`--config=configs/toy.py:tiny` (seconds; what the tests run).
"""
import ml_collections

from trajax import stage_configs

PRESETS = ("full", "tiny")


def get_config(preset: str = "full"):
  """The toy config; `preset` is the string after the colon in `configs/toy.py:tiny`."""
  if preset not in PRESETS:
    raise ValueError(f"configs/toy.py: unknown preset {preset!r}; expected one of {PRESETS}")
  config = ml_collections.ConfigDict()
  # "full" (the demo, ~15 min end to end on 2 CPU cores) or "tiny" (tests, seconds).
  config.preset = preset
  # Name of the trajectory manifest.
  config.name = "toy"

  config.world = ml_collections.ConfigDict()
  # Seed of the world's facts and of the documents about it.
  config.world.seed = 0
  # People in the world (each has ~12 facts to memorise).
  config.world.n_people = 480
  # Towns in the world.
  config.world.n_towns = 12
  # Training documents.
  config.world.n_train_docs = 1000
  # Held-out validation documents: validation loss in training, valid PPL in the store.
  config.world.n_validation_docs = 64
  # Held-out documents whose tokens the study analyses (trends): apart from validation, so
  # plots against validation PPL are not circular.
  config.world.n_analysis_docs = 64
  # Held-out documents the corrupted-text experiment corrupts (paper: OPT's opensubtitles
  # validation subset, App. C.1): apart from the validation documents the prompts come from.
  config.world.n_corrupted_docs = 16
  # Minimum BPE tokens per document (>= train.seq_len so a validation block is full).
  config.world.doc_tokens = 256
  # Tokenizer vocabulary, including 4 special and 256 byte tokens.
  config.world.vocab_size = 1536
  # Examples per BIG-bench multiple-choice task.
  config.world.n_task_examples = 100

  config.train = ml_collections.ConfigDict()
  # The family, smallest first: hidden size, layers, heads, FFN width, peak learning rate
  # (smaller models take larger rates, as OPT's Table 2).
  config.train.models = [
      dict(name="toy-s", hidden=16, layers=1, heads=2, ffn=64, lr=3e-3),
      dict(name="toy-m", hidden=32, layers=2, heads=2, ffn=128, lr=2.5e-3),
      dict(name="toy-l", hidden=64, layers=3, heads=4, ffn=256, lr=2e-3),
      dict(name="toy-xl", hidden=128, layers=4, heads=4, ffn=512, lr=1.5e-3),
  ]
  # Optimizer steps per model (the same data in the same order for every model).
  config.train.steps = 800
  # Sequences per step.
  config.train.batch_size = 16
  # Tokens per sequence, BOS included; also the models' max_position_embeddings.
  config.train.seq_len = 128
  # Linear warmup steps before the cosine decay.
  config.train.warmup_steps = 40
  # The learning rate decays to this fraction of the peak at the last step.
  config.train.min_lr_ratio = 0.1
  # AdamW decoupled weight decay (kernels and embeddings only).
  config.train.weight_decay = 0.01
  # AdamW betas.
  config.train.b1 = 0.9
  config.train.b2 = 0.98
  # Clip gradients to this global norm.
  config.train.grad_clip = 1.0
  # Checkpoints per model, spaced geometrically (dense early, sparse late).
  config.train.checkpoints = 16
  # The first checkpoint, as a fraction of training.
  config.train.first_checkpoint_fraction = 0.02
  # Log loss, tokens/s and ETA every this many steps.
  config.train.log_every = 50
  # Parameter init seed (the same for every model).
  config.train.init_seed = 0
  # Seed of the order in which training sequences are drawn.
  config.train.data_seed = 0

  # The later stages: each stage's own default config, with what differs for the toy study.
  # Paths (trajectory, tokenizer, data, tasks) are filled in by trajax.toy.study.wire.
  config.score = stage_configs.score()
  # Validation blocks are whole documents' first seq_len tokens (the models' context).
  config.score.data.block_len = config.train.seq_len
  config.score.data.gutenberg = False
  config.score.data.max_docs = 0
  config.score.batch_size = 8

  config.trends = stage_configs.trends()

  config.decode = stage_configs.decode()
  config.decode.data.gutenberg = False
  # Prompts from the first validation documents (paper: 5 tokens, 50 new tokens).
  config.decode.data.max_docs = 16
  config.decode.seq_len = config.train.seq_len
  config.decode.corrupted.max_docs = 16
  # The corrupted corpus is the world's "corrupted" split (set by trajax.toy.study.wire).
  config.decode.corrupted.data.gutenberg = False
  # Corrupted sequences must fit the context with BOS (paper: 100 tokens).
  config.decode.corrupted.max_length = min(100, config.train.seq_len - 1)

  config.icl = stage_configs.icl()
  config.icl.batch_size = 16

  if preset == "tiny":
    _tiny(config)
  return config


def _tiny(config):
  """The same study made small enough to train in seconds (tests)."""
  config.world.n_people = 40
  config.world.n_towns = 4
  config.world.n_train_docs = 120
  config.world.n_validation_docs = 8
  config.world.n_analysis_docs = 8
  config.world.n_corrupted_docs = 4
  config.world.doc_tokens = 64
  config.world.vocab_size = 512
  config.world.n_task_examples = 20
  config.train.models = [
      dict(name="toy-s", hidden=8, layers=1, heads=2, ffn=16, lr=1e-2),
      dict(name="toy-m", hidden=16, layers=1, heads=2, ffn=64, lr=1e-2),
      dict(name="toy-l", hidden=32, layers=2, heads=4, ffn=128, lr=7e-3),
      dict(name="toy-xl", hidden=80, layers=2, heads=4, ffn=320, lr=5e-3),
  ]
  config.train.steps = 120
  config.train.batch_size = 8
  config.train.seq_len = 64
  config.train.warmup_steps = 10
  config.train.checkpoints = 12
  config.train.log_every = 20
  config.score.data.block_len = config.train.seq_len
  config.decode.seq_len = config.train.seq_len
  config.decode.data.max_docs = 4
  config.decode.corrupted.max_docs = 4
  config.decode.corrupted.max_length = config.train.seq_len - 1
  config.decode.max_new_tokens = 20
