"""Validated configuration: ``RunConfig`` (everything a run needs besides its rows and
endpoints; the endpoints themselves are ``_endpoint.Endpoint``).

Frozen and keyword-only past the first argument, validated on construction, so a bad value
fails with a :class:`ConfigError` before any request is sent.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._endpoint import Endpoint, EndpointLike, coerce_endpoints, parse_endpoint_spec, positive
from ._exceptions import ConfigError
from ._proxy import check_proxy

__all__ = [
    "API", "Endpoint", "EndpointLike", "RunConfig", "coerce_endpoints", "parse_endpoint_spec",
    "run_config",
]

API = Literal["chat", "completions", "raw"]
_APIS = ("chat", "completions", "raw")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a run needs besides its rows. Validated on construction.

    ``rps`` is the global request rate (retries included; None: unpaced), ``concurrency``
    the global bound on requests in flight, ``max_attempts`` the attempts per row (the first
    included), ``timeout`` the per-attempt timeout in seconds. ``model``/``system``/``params``
    shape each request body; ``api`` is ``chat``, ``completions`` or ``raw``. Retries wait
    ``backoff_initial * 2**n`` up to ``backoff_max`` (up to 25% less, jittered), or what a
    ``Retry-After`` asks up to ``max_retry_after``. ``transport``: ``auto`` (the fast HTTP/1.1
    client, for http:// and https://), ``fast`` or ``aiohttp``, or a function
    ``(url, headers) -> Transport`` (e.g. ``llmframe.testing.MockTransport``, for tests
    without sockets). ``tpm`` is a global limit on tokens per minute (each endpoint may
    have its own ``tpm``/``rpm`` too); ``budget`` (USD) stops sending before the spend
    would pass it (every endpoint then needs ``price_in``/``price_out``).
    ``output_tokens`` is reserved per answer when the request sets no ``max_tokens``
    until answers show the real size; ``tokenizer`` ``chars`` (characters/4) or
    ``tiktoken`` (exact, when installed with its encoding already cached; else chars).
    ``schema``: a ``pl.Struct``, a pydantic model class or a JSON Schema dict; answers are
    then asked for as JSON of that shape, validated, and returned parsed (see ``_schema``).
    ``cache``: ``True`` (the user's cache directory), a path, or ``False``; unset, the
    environment variable ``LLMFRAME_CACHE`` decides (``1`` or a path; off when unset).
    ``cache_truncated``: also cache answers cut by ``max_tokens`` (``finish_reason`` length).
    ``proxy``: unset, ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` decide
    (read when the run starts); a URL (``http://[USER:PASSWORD@]HOST:PORT``) sends every
    endpoint through that proxy; ``False`` connects directly. An endpoint's own ``proxy``
    wins.

    >>> RunConfig(["http://127.0.0.1:8000/v1"], rps=100).rps
    100
    """

    endpoints: tuple[Endpoint, ...]
    _: KW_ONLY
    rps: float | None = None
    concurrency: int = 256
    max_attempts: int = 5
    timeout: float = 60.0
    api: API = "chat"
    model: str | None = None
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    max_retry_after: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    transport: Literal["auto", "fast", "aiohttp"] | Callable[..., Any] = "auto"
    tpm: float | None = None
    budget: float | None = None
    output_tokens: int = 512
    tokenizer: Literal["chars", "tiktoken"] = "chars"
    schema: Any = None
    cache: bool | str | os.PathLike[str] | None = None
    cache_truncated: bool = False
    proxy: str | bool | None = field(default=None, repr=False)  # may hold a password

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(coerce_endpoints(self.endpoints)))
        for name in ("rps", "tpm", "budget"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name), "run")
        positive("output_tokens", self.output_tokens, "run", integer=True)
        if self.tokenizer not in ("chars", "tiktoken"):
            msg = f"run: tokenizer must be chars or tiktoken, got {self.tokenizer!r}"
            raise ConfigError(msg)
        if self.budget is not None:
            unpriced = [ep.name for ep in self.endpoints if not ep.priced]
            if unpriced:
                msg = (f"run: budget needs price_in and price_out (USD per 1M tokens) on every "
                       f"endpoint; missing on {', '.join(map(repr, unpriced))}")
                raise ConfigError(msg)
        positive("concurrency", self.concurrency, "run", integer=True)
        positive("max_attempts", self.max_attempts, "run", integer=True)
        positive("timeout", self.timeout, "run")
        positive("backoff_initial", self.backoff_initial, "run")
        positive("backoff_max", self.backoff_max, "run")
        positive("max_retry_after", self.max_retry_after, "run")
        if self.api not in _APIS:
            msg = f"run: api must be one of {', '.join(_APIS)}, got {self.api!r}"
            raise ConfigError(msg)
        if not callable(self.transport) and self.transport not in ("auto", "fast", "aiohttp"):
            msg = f"run: transport must be auto, fast or aiohttp, got {self.transport!r}"
            raise ConfigError(msg)
        object.__setattr__(self, "proxy", check_proxy(self.proxy, "run: proxy"))
        if self.params is None:
            object.__setattr__(self, "params", {})
        if not isinstance(self.params, Mapping):
            msg = f"run: params must be a dict, got {type(self.params).__name__}"
            raise ConfigError(msg)
        object.__setattr__(self, "params", dict(self.params))
        reserved = {"messages", "prompt"} & set(self.params)
        if reserved:
            msg = f"run: params may not set {', '.join(sorted(reserved))} (they come from the rows)"
            raise ConfigError(msg)
        self._structured()
        object.__setattr__(self, "cache", _cache_setting(self.cache))
        for ep in self.endpoints:
            ep.api_key()  # a named but unset key variable fails now, not at the first request

    def _structured(self) -> None:
        if self.schema is None:
            return
        from ._schema import schema_of

        object.__setattr__(self, "schema", schema_of(self.schema))
        if self.api == "raw":
            msg = ("run: schema= (--schema) needs api='chat' or 'completions' (--api), not raw: "
                   "a raw row is its own body")
            raise ConfigError(msg)
        if "response_format" in self.params:
            msg = ("run: give schema= (--schema) or a response_format parameter (params= / "
                   "--param), not both: schema= sets response_format in the form each server "
                   "takes")
            raise ConfigError(msg)


def _cache_setting(cache: Any) -> Path | bool:
    """``cache=`` as a path, or False (off); unset (None): ``$LLMFRAME_CACHE`` decides."""
    from ._cache import cache_path

    if cache is None:
        env = os.environ.get("LLMFRAME_CACHE", "").strip()
        if env.lower() in ("", "0", "false", "no", "off"):
            return False
        if env.lower() in ("1", "true", "yes", "on"):
            cache = True
        elif "/" in env or os.sep in env or env.startswith(("~", ".")) or env.endswith(
                (".sqlite", ".sqlite3", ".db")):
            cache = env
        else:
            msg = (f"LLMFRAME_CACHE={env!r}: expected 1/true/on, 0/false/off, or a path "
                   "(with a / in it, or ending in .sqlite3)")
            raise ConfigError(msg)
    path = cache_path(cache)
    return False if path is None else path


_OPTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name != "endpoints")


def run_config(endpoints: EndpointLike | Iterable[EndpointLike] | None = None,
               config: RunConfig | None = None, **options: Any) -> RunConfig:
    """One :class:`RunConfig` from ``config`` and/or keywords (the keywords win).

    >>> run_config(["http://127.0.0.1:8000/v1"], rps=5).rps
    5
    >>> run_config(config=RunConfig(["http://127.0.0.1:8000/v1"]), max_attempts=2).max_attempts
    2
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        msg = (f"unknown option(s) {', '.join(map(repr, unknown))}; run options are "
               f"{', '.join(_OPTIONS)} (see llmframe.RunConfig)")
        raise ConfigError(msg)
    if config is None:
        if endpoints is None:
            msg = "no endpoints given: pass endpoints=[...] or config=RunConfig(...)"
            raise ConfigError(msg)
        return RunConfig(endpoints, **options)  # type: ignore[arg-type]
    if not isinstance(config, RunConfig):
        msg = f"config must be a llmframe.RunConfig, got {type(config).__name__}"
        raise ConfigError(msg)
    if endpoints is not None:
        options["endpoints"] = endpoints
    return dataclasses.replace(config, **options) if options else config
