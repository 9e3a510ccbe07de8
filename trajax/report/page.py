"""One self-contained HTML page: figures embedded, one computed finding per figure."""
from __future__ import annotations

import base64
import dataclasses
import html
import os

from trajax import atomic


@dataclasses.dataclass
class Section:
  """A figure (or table) of the report.

  Attributes:
    title: e.g. "Fig. 1 — validation perplexity vs training FLOPs".
    paper: what the paper found (fixed text).
    finding: what this run shows, computed from its numbers.
    images: PNG paths, embedded in the page.
    html: optional extra HTML (a table, the token view), inserted as is.
  """
  title: str
  paper: str
  finding: str
  images: list[str] = dataclasses.field(default_factory=list)
  html: str = ""


def _img(path: str) -> str:
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode()
  name = html.escape(os.path.basename(path))
  return (f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
          f"<figcaption>{name}</figcaption></figure>")


def write(path: str, title: str, intro: str, sections: list[Section],
          not_run: list[str] | tuple[str, ...] = ()) -> str:
  """Writes the page atomically.

  Args:
    path: the HTML file to write.
    title: the page's title and heading.
    intro: one paragraph under the heading.
    sections: in page order; every image must exist and be non-empty.
    not_run: one line per stage whose outputs are absent (said under the intro).

  Returns:
    `path`.
  """
  for s in sections:
    for img in s.images:
      if not os.path.isfile(img) or os.path.getsize(img) == 0:
        raise FileNotFoundError(f"report section {s.title!r}: figure {img} is missing or empty")
  parts = [
      f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
      "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
      "figure{display:inline-block;margin:.5em}img{max-width:520px}"
      ".paper{color:#555}.finding{background:#eef6ee;padding:.4em .6em}"
      "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
      "</head><body>", f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>"
  ]
  if not_run:
    parts.append("<p class='not-run'><b>Not run in this workdir:</b> " +
                 "; ".join(html.escape(line) for line in not_run) + ".</p>")
  parts.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>"
                                for i, s in enumerate(sections)) + "</ul>")
  for i, s in enumerate(sections):
    parts.append(f"<section id='s{i}'><h2>{html.escape(s.title)}</h2>")
    parts.append(f"<p class='paper'><b>Paper:</b> {html.escape(s.paper)}</p>")
    parts.append(f"<p class='finding'><b>This run:</b> {html.escape(s.finding)}</p>")
    parts.extend(_img(p) for p in s.images)
    if s.html:
      parts.append(s.html)
    parts.append("</section>")
  parts.append("</body></html>")
  return atomic.write_text(path, "\n".join(parts))
