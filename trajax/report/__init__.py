"""The HTML report of a workdir: `build(workdir)` (what `launch/report.py` runs).

  page.py       one self-contained page: figures embedded, one finding per figure
  stages.py     what each stage left in the workdir, read from disk
  claims.py     the measurements that test the paper's claims (pure functions)
  findings.py   each section's "this run" sentence, computed from those numbers (§3);
                findings_later.py the same for §4 and §5
  build.py      the page of a workdir, toy study or real checkpoints alike
"""
from trajax.report.build import build, describe
from trajax.report.page import Section, write

__all__ = ["build", "describe", "Section", "write"]
