"""``llmframe cache info|clear [PATH]``: look into the response cache, or empty it."""

from __future__ import annotations

from pathlib import Path

import click

from ._cli_common import UsageProblem
from ._exceptions import ConfigError

__all__ = ["cache"]


def _path(path: Path | None) -> Path:
    from ._cache import cache_path

    try:
        resolved = cache_path(True if path is None else path)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None
    assert resolved is not None
    return resolved


@click.group()
def cache() -> None:
    """The response cache: a SQLite file (WAL) that answers requests already answered,
    free. On with `llmframe run --cache [PATH]`, `cache=True` in Python, or LLMFRAME_CACHE=1;
    default file: the user's cache directory (LLMFRAME_CACHE_DIR overrides it)."""


@cache.command("info")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def info(path: Path | None) -> None:
    """Show the cache file's size, entries and date range (default: the user's cache)."""
    from ._cache import open_info

    try:
        click.echo(str(open_info(_path(path))))
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None


@cache.command("clear")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def clear(path: Path | None) -> None:
    """Delete every entry of the cache (default: the user's cache) and shrink the file."""
    from ._cache import clear_cache

    where = _path(path)
    try:
        removed = clear_cache(where)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None
    click.echo(f"removed {removed:,} entries from {where}")
