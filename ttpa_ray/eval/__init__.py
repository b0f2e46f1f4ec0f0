"""Evaluation against any OpenAI-compatible endpoint (DESIGN §7).

Pure logic: `examples` (scoring one answer, aggregating), `suites` (suite spec →
examples), `toolbench` (ToolBench records → examples). I/O: `harness` (`run_eval`,
`summarize`).
"""

from ttpa_ray.eval.harness import run_eval, suite_dir_name, summarize
from ttpa_ray.eval.suites import load_suite

__all__ = ["load_suite", "run_eval", "suite_dir_name", "summarize"]
