"""The HTML report of any workdir: every stage found on disk, one page.

  python launch/report.py --workdir=out/                  # writes out/report.html
  python launch/report.py --workdir=out/ --out=/tmp/r.html --title="OPT 125m-30b"
"""
from absl import app, flags

from trajax import report

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Workdir holding the stage outputs (store/, "
    "trends/, decode/, icl/); absent stages are listed as not run.")
_TITLE = flags.DEFINE_string("title", None, "Page title; default: from the workdir.")
_OUT = flags.DEFINE_string("out", None, "HTML file to write; default: {workdir}/report.html.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  print(f"report: {report.build(_WORKDIR.value, title=_TITLE.value, out=_OUT.value)}")


if __name__ == "__main__":
  app.run(main)
