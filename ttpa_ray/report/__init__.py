"""A self-contained HTML report of a pipeline run (`RUN_DIR/report/index.html`).

from ttpa_ray.report import build_report, headline
path = build_report("runs/x")   # runs/x/report/index.html
print(headline("runs/x"))       # models × exact / ESM / name acc. / parse rate with intervals
"""

from ttpa_ray.report.build import build_report, headline, render

__all__ = ["build_report", "headline", "render"]
