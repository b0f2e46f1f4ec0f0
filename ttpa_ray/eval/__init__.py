"""Evaluation against any OpenAI-compatible endpoint (DESIGN §7).

Pure logic: `examples` (scoring one answer, aggregating), `stats` (bootstrap intervals,
paired differences), `suites` (suite spec → examples), `toolbench` (ToolBench records →
examples). I/O: `harness` (`run_eval`), `summary` (`summarize`: the models compared on one
suite, `RUN_DIR/eval/summary.json`).
"""

from ttpa_ray.eval.harness import run_eval, suite_dir_name
from ttpa_ray.eval.stats import bootstrap_ci, paired_difference
from ttpa_ray.eval.suites import load_suite
from ttpa_ray.eval.summary import sft_warning, summarize

__all__ = [
    "bootstrap_ci",
    "load_suite",
    "paired_difference",
    "run_eval",
    "sft_warning",
    "suite_dir_name",
    "summarize",
]
