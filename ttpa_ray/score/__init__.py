"""Scoring: ESM (pure functions), its Arrow batch form, and the BFCL-style AST checker."""

from ttpa_ray.score.ast_checker import ast_check, ast_check_detail
from ttpa_ray.score.batch import ESMBatchScorer
from ttpa_ray.score.esm import esm_breakdown, esm_score

__all__ = ["ESMBatchScorer", "ast_check", "ast_check_detail", "esm_breakdown", "esm_score"]
