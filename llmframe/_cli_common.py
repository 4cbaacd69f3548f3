"""What the CLI's commands share: exit codes, the usage-problem exception, and readers of
the files a command line names (endpoints TOML, JSON Schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from ._config import Endpoint, coerce_endpoints
from ._exceptions import ConfigError
from ._json import loads

__all__ = ["EXIT_BUDGET", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_ROW_ERRORS", "EXIT_TERMINATED",
           "EXIT_USAGE", "UsageProblem", "load_endpoints_file", "load_schema_file",
           "parse_param"]

EXIT_OK, EXIT_ROW_ERRORS, EXIT_USAGE, EXIT_BUDGET = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


class UsageProblem(click.ClickException):
    """A problem the user can fix; exit code 2, nothing was sent."""

    exit_code = EXIT_USAGE


def parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        msg = f"--param expects KEY=VALUE, got {text!r}"
        raise UsageProblem(msg)
    try:
        parsed = loads(value.encode())
    except orjson.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def load_endpoints_file(path: Path) -> list[Endpoint]:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"endpoints file not found: {path}"
        raise UsageProblem(msg) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        msg = f"endpoints file {path}: not valid TOML ({exc})"
        raise UsageProblem(msg) from None
    specs = doc.get("endpoints", doc.get("endpoint"))
    if not isinstance(specs, list) or not specs:
        msg = (f"endpoints file {path}: expected a list of [[endpoints]] tables, "
               'each with at least url = "http://..."')
        raise UsageProblem(msg)
    try:
        return coerce_endpoints(specs)
    except ConfigError as exc:
        msg = f"endpoints file {path}: {exc}"
        raise UsageProblem(msg) from None



def load_schema_file(path: Path) -> dict[str, Any]:
    """``--schema FILE.json``: a JSON Schema, checked now (nothing is sent before)."""
    from ._schema import schema_of

    try:
        doc = loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))  # a BOM is fine
    except FileNotFoundError:
        msg = f"schema file not found: {path}"
        raise UsageProblem(msg) from None
    except IsADirectoryError:
        msg = f"schema file is a directory: {path}"
        raise UsageProblem(msg) from None
    except orjson.JSONDecodeError as exc:
        msg = f"schema file {path}: not valid JSON ({exc})"
        raise UsageProblem(msg) from None
    if not isinstance(doc, dict):
        msg = f"schema file {path}: expected a JSON Schema object, got {type(doc).__name__}"
        raise UsageProblem(msg)
    try:
        schema_of(doc)
    except ConfigError as exc:
        msg = f"schema file {path}: {exc}"
        raise UsageProblem(msg) from None
    return doc
