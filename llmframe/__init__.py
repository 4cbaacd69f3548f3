"""llmframe: one LLM request per row, balanced over OpenAI-compatible endpoints.

>>> import llmframe  # doctest: +SKIP
>>> llmframe.run_file("requests.jsonl", endpoints=["http://127.0.0.1:8000/v1"], rps=100)
"""

from importlib import metadata as _metadata

from . import _namespace  # noqa: F401 - registers df.llm and pl.col(...).llm
from ._config import Endpoint, RunConfig
from ._engine import Result, RunControl, RunStats, stream_results
from ._exceptions import ConfigError, InputFileError, Interrupted, LLMFrameError
from ._frame_io import read_jsonl, write_results
from ._jsonl import iter_rows
from .functions import acomplete, complete, complete_expr, recover

try:
    __version__ = _metadata.version("llmframe")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ConfigError",
    "Endpoint",
    "InputFileError",
    "Interrupted",
    "LLMFrameError",
    "Result",
    "RunConfig",
    "RunControl",
    "RunStats",
    "__version__",
    "acomplete",
    "complete",
    "complete_expr",
    "iter_rows",
    "read_jsonl",
    "recover",
    "stream_results",
    "write_results",
]
