"""Argument types and the helpers every command uses: inputs checked before work,
config overrides validated exactly as the YAML is."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ttpa_ray.cli.errors import UsageError, error_text
from ttpa_ray.storage import is_uri


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _float_above(low: float, inclusive: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value >= low if inclusive else value > low) or value != value:
            raise argparse.ArgumentTypeError(
                f"must be {'at least' if inclusive else 'greater than'} {low}, got {text}"
            )
        return value

    return parse


POSITIVE_INT = _int_at_least(1)
NON_NEGATIVE_INT = _int_at_least(0)
POSITIVE_FLOAT = _float_above(0.0)
NON_NEGATIVE_FLOAT = _float_above(0.0, inclusive=True)


def need_input(path: str, flag: str) -> None:
    """A local input must exist before any work starts (URIs are the stage's to check)."""
    if not is_uri(path) and not Path(path).exists():
        raise FileNotFoundError(f"{flag}: not found: {path}")


def load_config_arg(args: argparse.Namespace) -> Any:
    from ttpa_ray.config import load_config

    try:
        return load_config(args.config)
    except (OSError, ValueError) as e:
        raise UsageError(f"--config: {error_text(e)}") from None


def override(cfg: Any, updates: dict[str, Any], section: str) -> Any:
    """`cfg` with the command line's `updates`, validated exactly as the YAML is."""
    from pydantic import ValidationError

    from ttpa_ray.config import describe

    if not updates:
        return cfg
    try:
        return type(cfg).model_validate({**cfg.model_dump(), **updates})
    except ValidationError as e:
        raise UsageError(f"invalid {section} settings:\n  {describe(e, section + '.')}") from None
