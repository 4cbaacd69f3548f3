"""Local OpenAI-compatible endpoints (and a socket-free transport) for tests, demos and
benchmarks."""

from .._transport import MockTransport
from ._server import FAULTS, MockServer, MockState, serve

__all__ = ["FAULTS", "MockServer", "MockState", "MockTransport", "serve"]
