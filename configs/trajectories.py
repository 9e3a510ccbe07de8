"""Published training trajectories, as presets of `trajax.revisions.build_manifest`.

  python launch/manifest.py --config=configs/trajectories.py:olmo-1b \
      --cache=~/.cache/huggingface/hub --out=runs/olmo-1b.json

Each preset names the hub repos, how its revisions are named, the tokens per
optimizer step and the parameter count of its config (checked by
tests/test_llama_sizes.py against transformers for the config.json contents
written there). Where a number could not be verified offline it says so; the
builder also checks tokens_per_step against the token counts the revision
names carry and warns when they disagree (`ManifestReport.token_mismatches`).
"""
import ml_collections

PRESETS = {
    "pythia": dict(
        name="pythia",
        org="EleutherAI",
        repos=[
            "pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b",
            "pythia-6.9b", "pythia-12b"
        ],
        family="gpt_neox",
        # Biderman et al. 2023, Appendix E: 1,024 sequences x 2,048 tokens per step.
        tokens_per_step=2_097_152,
        # `step0`, `step1`, `step2`, ..., `step512`, `step1000`, ..., `step143000`
        # (trajax.pythia.pythia_revisions: the 154 saved steps of the paper).
        revisions=tuple(
            f"step{s}" for s in [0] + [2**i for i in range(10)] + list(range(1000, 143_001, 1000))),
        stage_final_steps=(),
        # Pythia paper Table 1 (total parameters): 70m 70,426,624 ... 410m 405,334,016
        # (tests/test_gpt_neox.py checks every size).
        params={"pythia-410m": 405_334_016},
        note="",
    ),
    "olmo-1b": dict(
        name="olmo-1b",
        org="allenai",
        repos=["OLMo-1B-hf"],
        family="olmo",
        # Groeneveld et al. 2024 (OLMo): batches of ~4M tokens, 2,048 instances x 2,048 tokens.
        # Consistent with the revision names (step20000-tokens84B: 20,000 x 4,194,304 = 83.9B).
        tokens_per_step=4_194_304,
        # Revisions `step{N}-tokens{M}B`, every 1,000 steps; all those in the cache are taken.
        revisions=(),
        stage_final_steps=(),
        params={"OLMo-1B-hf": 1_176_764_416},  # tied head; tests/test_llama_sizes.py
        note="The number and last step of the revisions were not verified offline.",
    ),
    "olmo-2-1b": dict(
        name="olmo-2-1b",
        org="allenai",
        repos=["OLMo-2-0425-1B"],
        family="olmo2",
        # 512 instances x 4,096 tokens. NOT verified offline: derived from the revision names'
        # ratio of tokens to steps (~2.1M); the builder warns if the names disagree.
        tokens_per_step=2_097_152,
        # Revisions `stage1-step{N}-tokens{M}B` (pre-training) and
        # `stage2-ingredient{K}-step{N}-tokens{M}B` (mid-training runs; pass ingredient=).
        revisions=(),
        # Stage 1's final step is taken from the cache (its last stage-1 revision) and logged.
        stage_final_steps=(),
        params={"OLMo-2-0425-1B": 1_484_916_736},  # tests/test_llama_sizes.py
        note="tokens_per_step and stage 1's final step were not verified offline.",
    ),
    "amber": dict(
        name="amber",
        org="LLM360",
        repos=["Amber"],
        family="llama",
        # Revisions `ckpt_000` ... `ckpt_359` (Liu et al. 2023, LLM360: 360 checkpoints over
        # ~1.26T tokens, ~3.5B tokens each). A manifest step is the checkpoint index. The exact
        # tokens per checkpoint could not be verified offline: pass tokens_per_step.
        tokens_per_step=None,
        revisions=(),
        stage_final_steps=(),
        params={"Amber": 6_738_415_616},  # the LLaMA-7B architecture; tests/test_llama_sizes.py
        note="tokens per checkpoint not verified offline; give --tokens_per_step.",
    ),
    "tinyllama": dict(
        name="tinyllama",
        org="TinyLlama",
        repos=["tinyLlama-intermediate-checkpoints"],
        family="llama",
        # Zhang et al. 2024 (TinyLlama): batches of 2M tokens, 1,024 x 2,048. Consistent with the
        # released names (step-1431k-3T: 1,431,000 x 2,097,152 = 3.0T tokens).
        tokens_per_step=2_097_152,
        # Branch names `step-{N}k-token-{M}B`; the repo and branch spelling were NOT verified
        # offline (every cached branch whose name parses is taken).
        revisions=(),
        stage_final_steps=(),
        params={"tinyLlama-intermediate-checkpoints": 1_100_048_384},  # tests/test_llama_sizes.py
        note="repo and branch names not verified offline.",
    ),
}


def get_config(preset: str = "pythia"):
  """The preset named after the colon: `--config=configs/trajectories.py:olmo-1b`."""
  if preset not in PRESETS:
    raise ValueError(f"unknown trajectory preset {preset!r}; presets: {sorted(PRESETS)}")
  return ml_collections.ConfigDict(dict(PRESETS[preset], ingredient=0))
