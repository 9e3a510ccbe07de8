"""The lm-evaluation-harness side of bench/icl_bench.py; runs in the bench venv, not trajax's.

  /work/venv-lmeval/bin/python bench/lmeval_side.py IN.json OUT.json

IN.json: {"model": HF dir, "batch_size": 16, "device": "cpu", "dtype": "float32",
"pairs": [[context, continuation, context token ids, continuation token ids], ...]}.
Loads the model with lm-eval's HFLM (BOS added, as trajax's rows have it), times one
`loglikelihood` call over every (context, continuation) string pair (model load not
timed), and writes OUT.json: {"seconds", "loglik" (per pair), "tokens_equal" (per pair:
lm-eval's own tokenisation gave trajax's tokens), "loglik_tokens" (the same pairs through
`_loglikelihood_tokens` with trajax's token ids, untimed: the comparison where the
tokenisations differ), "lm_eval_version", "torch_version"}.
"""
import json
import sys
import time


def main(src, dst):
  import torch
  import lm_eval
  from lm_eval.api.instance import Instance
  from lm_eval.models.huggingface import HFLM

  with open(src) as f:
    job = json.load(f)
  lm = HFLM(pretrained=job["model"], backend="causal", batch_size=job["batch_size"],
            device=job["device"], dtype=job["dtype"], add_bos_token=True, max_length=2048)
  pairs = job["pairs"]
  instances = [
      Instance(request_type="loglikelihood", doc={}, arguments=(c, o), idx=i)
      for i, (c, o, _, _) in enumerate(pairs)
  ]
  t0 = time.perf_counter()
  out = lm.loglikelihood(instances, disable_tqdm=True)
  seconds = time.perf_counter() - t0
  tokens_equal = []
  for c, o, ctx_ids, cont_ids in pairs:
    ctx_enc, cont_enc = lm._encode_pair(c, o)  # pylint: disable=protected-access
    tokens_equal.append(
        list(ctx_enc) + list(cont_enc) == list(ctx_ids) + list(cont_ids) and
        list(cont_enc) == list(cont_ids))
  by_tokens = lm._loglikelihood_tokens(  # pylint: disable=protected-access
      [((c, o), ctx_ids, cont_ids) for c, o, ctx_ids, cont_ids in pairs], disable_tqdm=True)
  with open(dst, "w") as f:
    json.dump(
        {
            "seconds": seconds, "loglik": [float(x[0]) for x in out], "tokens_equal": tokens_equal,
            "loglik_tokens": [float(x[0]) for x in by_tokens], "lm_eval_version": getattr(
                lm_eval, "__version__",
                "?"), "torch_version": torch.__version__, "threads": torch.get_num_threads()
        }, f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
