"""llmframe: one LLM request per row, balanced over OpenAI-compatible endpoints.

>>> import pathlib, tempfile
>>> import llmframe
>>> from llmframe.testing import MockServer
>>> requests = pathlib.Path(tempfile.mkdtemp()) / "requests.jsonl"
>>> _ = requests.write_text('{"input": "Hello"}\\n{"input": "World"}\\n')
>>> with MockServer() as server:
...     stats = llmframe.run_file(requests, endpoints=[server.url], rps=100)
>>> stats.rows, stats.ok, stats.errors
(2, 2, 0)
"""

from importlib import metadata as _metadata

from . import _namespace  # noqa: F401 - registers df.llm and pl.col(...).llm
from ._config import Endpoint, RunConfig
from ._engine import RunControl, stream_results
from ._estimate import Estimate, estimate
from ._exceptions import (
    BudgetReached,
    ConfigError,
    InputFileError,
    Interrupted,
    LLMFrameError,
    StoreError,
    WorkerError,
)
from ._files import run_file
from ._frame_io import read_jsonl, write_results
from ._jsonl import iter_rows
from ._results import EndpointStats, Result, RunStats
from .functions import acomplete, complete, complete_expr, recover

try:
    __version__ = _metadata.version("llmframe")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BudgetReached",
    "ConfigError",
    "Endpoint",
    "EndpointStats",
    "Estimate",
    "InputFileError",
    "Interrupted",
    "LLMFrameError",
    "Result",
    "RunConfig",
    "RunControl",
    "RunStats",
    "StoreError",
    "WorkerError",
    "__version__",
    "acomplete",
    "complete",
    "complete_expr",
    "estimate",
    "iter_rows",
    "read_jsonl",
    "recover",
    "run_file",
    "stream_results",
    "write_results",
]
