"""Local OpenAI-compatible endpoints for tests, demos and benchmarks."""

from ._server import FAULTS, MockServer, MockState, serve

__all__ = ["FAULTS", "MockServer", "MockState", "serve"]
