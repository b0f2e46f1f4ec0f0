"""Data model: OpenAI tool format, records with Arrow schemas, Parquet I/O, validation."""

from ttpa_ray.schema.io import (
    StageCounts,
    read_rows,
    read_table,
    write_manifest,
    write_quarantine,
    write_rows,
)
from ttpa_ray.schema.records import (
    EPISODE_SCHEMA,
    MESSAGE_TYPE,
    PAIR_SCHEMA,
    QUARANTINE_SCHEMA,
    Episode,
    Message,
    PreferencePair,
    QuarantineRecord,
    ToolCall,
)
from ttpa_ray.schema.tools import ToolSpec, ToolValidationError, tool_errors, validate_tool
from ttpa_ray.schema.validate import argument_errors, call_errors

__all__ = [
    "EPISODE_SCHEMA",
    "MESSAGE_TYPE",
    "PAIR_SCHEMA",
    "QUARANTINE_SCHEMA",
    "Episode",
    "Message",
    "PreferencePair",
    "QuarantineRecord",
    "StageCounts",
    "ToolCall",
    "ToolSpec",
    "ToolValidationError",
    "argument_errors",
    "call_errors",
    "read_rows",
    "read_table",
    "tool_errors",
    "validate_tool",
    "write_manifest",
    "write_quarantine",
    "write_rows",
]
