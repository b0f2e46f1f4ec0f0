"""Argument types and the helpers every command uses: inputs checked before work,
config overrides validated exactly as the YAML is."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ttpa_ray.cli.errors import UsageError, error_text
from ttpa_ray.storage import is_uri

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo


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
    """`config.apply_overrides`, a bad value reported as a usage error."""
    from ttpa_ray.config import apply_overrides

    try:
        return apply_overrides(cfg, updates, section)
    except ValueError as e:
        raise UsageError(str(e)) from None


def config_field(path: str) -> FieldInfo:
    """The `Config` field at dotted `path` (`construct.teacher.kind`)."""
    from ttpa_ray.config import Config

    *sections, name = path.split(".")
    model: Any = Config
    for section in sections:
        model = model.model_fields[section].annotation
    return cast("FieldInfo", model.model_fields[name])


def field_default(path: str) -> Any:
    """The default of the config field at `path`, for a flag that sets it outright."""
    return config_field(path).get_default(call_default_factory=True)


def field_help(path: str, note: str = "") -> str:
    """A flag's help from the config field it sets (`sample.n`): the field's description,
    `note` (what only the flag does), its YAML key and default; each written once, in
    `config.py`. A default of None or empty is left out (the description says what it
    means where it matters)."""
    field = config_field(path)
    default = field_default(path)
    text = "; ".join(part for part in (field.description, note) if part)
    where = path if default is None or default in ({}, []) else f"{path}, default {default}"
    # argparse %-formats help text
    return f"{text} (config: {where})".lstrip().replace("%", "%%")
