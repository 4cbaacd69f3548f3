"""Endpoints: ``Endpoint`` (one OpenAI-compatible server, validated on construction) and
the ways a user names one: a URL, a ``key=value`` spec string, a dict (``coerce_endpoints``).

An endpoint holds no API key: it names the environment variable the key is read from when a
run starts.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._exceptions import ConfigError
from ._proxy import Proxy, check_proxy, resolve, shown_proxy
from ._secrets import looks_like_a_key as _looks_like_a_key
from ._secrets import redact_url

__all__ = ["Endpoint", "EndpointLike", "coerce_endpoints", "parse_endpoint_spec", "positive",
           "proxy_of"]

_API_PATHS = {
    "chat": "/chat/completions", "completions": "/completions", "raw": "/chat/completions",
}
_EXPLICIT_PATHS = ("/chat/completions", "/completions", "/embeddings", "/responses")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|password", re.I)


def _price(name: str, value: Any, where: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not (value >= 0 and math.isfinite(value))):
        msg = f"{where}: {name} must be a number >= 0 (USD per 1M tokens), got {value!r}"
        raise ConfigError(msg)


def positive(name: str, value: Any, where: str, *, integer: bool = False) -> None:
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an integer" if integer else "a number"
        msg = f"{where}: {name} must be {kind} > 0, got {value!r}"
        raise ConfigError(msg)
    if not (value > 0 and math.isfinite(value)):
        msg = f"{where}: {name} must be > 0, got {value!r}"
        raise ConfigError(msg)


@dataclass(frozen=True, slots=True, repr=False)
class Endpoint:
    """One OpenAI-compatible server.

    ``url`` is a base such as ``http://127.0.0.1:8000/v1``; the API path
    (``/chat/completions`` or ``/completions``) is appended unless the URL already ends with
    one. The key, if any, is read from the environment variable ``api_key_env`` at run time
    and sent as ``Authorization: Bearer ...`` to this endpoint only. Limits of its own:
    ``rps``/``rpm`` (requests), ``tpm`` (tokens per minute), ``max_concurrency``; prices
    ``price_in``/``price_out`` in USD per 1M tokens give each row a ``cost_usd``.

    >>> Endpoint("http://127.0.0.1:8000/v1", weight=3, api_key_env="OPENAI_API_KEY")
    Endpoint('http://127.0.0.1:8000/v1', weight=3, api_key_env='OPENAI_API_KEY')
    """

    url: str
    _: KW_ONLY
    model: str | None = None
    weight: float = 1.0
    api_key_env: str | None = None
    headers: Mapping[str, str] | None = field(default=None, compare=False)
    rps: float | None = None
    rpm: float | None = None
    tpm: float | None = None
    max_concurrency: int | None = None
    timeout: float | None = None
    price_in: float | None = None
    price_out: float | None = None
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True
    proxy: str | bool | None = None

    def __post_init__(self) -> None:
        where = f"endpoint {redact_url(str(self.url))!r}"
        if not isinstance(self.url, str):
            msg = f"endpoint url must be a string, got {self.url!r}"
            raise ConfigError(msg)
        parts = urlsplit(self.url)  # the scheme in lower case: HTTPS:// is https://
        object.__setattr__(self, "url", parts.scheme + self.url[len(parts.scheme):])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"{where}: url must be an http:// or https:// URL with a host"
            raise ConfigError(msg)
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            msg = f"{where}: url has an invalid port"
            raise ConfigError(msg) from None
        positive("weight", self.weight, where)
        for name in ("rps", "rpm", "tpm"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name), where)
        for name in ("price_in", "price_out"):
            _price(name, getattr(self, name), where)
        if (self.price_in is None) != (self.price_out is None):
            msg = f"{where}: give price_in and price_out together (USD per 1M tokens)"
            raise ConfigError(msg)
        _check_tls(self, where)
        object.__setattr__(self, "proxy", check_proxy(self.proxy, f"{where}: proxy"))
        if self.max_concurrency is not None:
            positive("max_concurrency", self.max_concurrency, where, integer=True)
        if self.timeout is not None:
            positive("timeout", self.timeout, where)
        if self.model is not None and not isinstance(self.model, str):
            msg = f"{where}: model must be a string, got {self.model!r}"
            raise ConfigError(msg)
        if self.api_key_env is not None and (
            not isinstance(self.api_key_env, str) or not _ENV_NAME.match(self.api_key_env)
            or _looks_like_a_key(self.api_key_env)
        ):
            msg = (
                f"{where}: api_key_env must be the NAME of an environment variable "
                "(letters, digits, underscores), not the key itself"
            )
            raise ConfigError(msg)
        if self.headers is not None:
            if not isinstance(self.headers, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
            ):
                msg = f"{where}: headers must map strings to strings"
                raise ConfigError(msg)
            object.__setattr__(self, "headers", dict(self.headers))

    def ssl_context(self, warn: bool = True) -> Any:
        """The TLS context for this endpoint (None for http://); see ``_tls``."""
        if not self.url.startswith("https://"):
            return None
        from ._tls import client_context

        return client_context(ca_bundle=self.ca_bundle, client_cert=self.client_cert,
                              client_key=self.client_key, verify=self.verify,
                              name=self.name, warn=warn)

    @property
    def request_rate(self) -> float | None:
        """Requests per second this endpoint may take: the tighter of ``rps`` and ``rpm``."""
        rates = [r for r in (self.rps, None if self.rpm is None else self.rpm / 60) if r]
        return min(rates) if rates else None

    @property
    def priced(self) -> bool:
        return self.price_in is not None and self.price_out is not None

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """USD for one answer's usage (None without prices or usage).

        >>> Endpoint("http://a/v1", price_in=2.5, price_out=10).cost(1000, 500)
        0.0075
        """
        if not self.priced or (prompt_tokens is None and completion_tokens is None):
            return None
        return ((prompt_tokens or 0) * self.price_in  # type: ignore[operator]
                + (completion_tokens or 0) * self.price_out) / 1e6  # type: ignore[operator]

    @property
    def name(self) -> str:
        """The URL as it may be shown: without any credentials."""
        return redact_url(self.url)

    def request_url(self, api: str) -> str:
        """The URL to POST to for ``api``."""
        path = urlsplit(self.url).path.rstrip("/")
        if path.endswith(_EXPLICIT_PATHS):
            return self.url
        return self.url.rstrip("/") + _API_PATHS[api]

    def api_key(self) -> str | None:
        """Read the key from the environment; a named but unset variable is a ConfigError."""
        if self.api_key_env is None:
            return None
        key = (os.environ.get(self.api_key_env) or "").strip()
        if not key:
            msg = (
                f"endpoint {self.name!r}: environment variable {self.api_key_env} is not set "
                f"(set it to the API key, e.g. export {self.api_key_env}=...)"
            )
            raise ConfigError(msg)
        bad = next((i for i, c in enumerate(key) if not " " < c < "\x7f"), None)
        if bad is not None:
            msg = (
                f"endpoint {self.name!r}: environment variable {self.api_key_env} holds a "
                f"character that cannot be sent in an HTTP header (at position {bad}: a "
                "space, line break or non-ASCII character, often from a copy-paste); set it "
                "to the key alone"
            )
            raise ConfigError(msg)
        return key

    def __repr__(self) -> str:
        args = [repr(self.name)]
        for name in ("model", "weight", "api_key_env", "rps", "rpm", "tpm", "max_concurrency",
                     "timeout", "price_in", "price_out", "ca_bundle", "client_cert",
                     "client_key"):
            value = getattr(self, name)
            if value is not None and not (name == "weight" and value == 1.0):
                args.append(f"{name}={value!r}")
        if not self.verify:
            args.append("verify=False")
        if self.proxy is not None:
            args.append(f"proxy={shown_proxy(self.proxy)!r}")
        if self.headers:
            shown = {k: ("***" if _SECRET_HEADER.search(k) else v) for k, v in self.headers.items()}
            args.append(f"headers={shown!r}")
        return f"Endpoint({', '.join(args)})"


def proxy_of(ep: Endpoint, url: str, run_proxy: str | bool | None) -> Proxy | None:
    """The proxy requests to ``url`` go through (the environment is read now): the
    endpoint's ``proxy``, else the run's, else HTTPS_PROXY/HTTP_PROXY/NO_PROXY."""
    own = ep.proxy is not None
    where = f"endpoint {ep.name!r}: proxy" if own else "proxy (--proxy / proxy=)"
    return resolve(url, ep.proxy if own else run_proxy, os.environ, where)


def _check_tls(ep: Endpoint, where: str) -> None:
    """TLS options: files that exist (PEM), ``verify`` a boolean (``"false"`` in a
    spec string), and only on https URLs."""
    if isinstance(ep.verify, str) and ep.verify.lower() in ("true", "false"):
        object.__setattr__(ep, "verify", ep.verify.lower() == "true")
    if not isinstance(ep.verify, bool):
        msg = f"{where}: verify must be true or false, got {ep.verify!r}"
        raise ConfigError(msg)
    for name in ("ca_bundle", "client_cert", "client_key"):
        value = getattr(ep, name)
        if value is None:
            continue
        path = os.path.expanduser(str(value))
        if not os.path.isfile(path):
            msg = f"{where}: {name} {value!r} is not a file (a PEM file is expected)"
            raise ConfigError(msg)
        object.__setattr__(ep, name, path)
    tls = ep.ca_bundle or ep.client_cert or ep.client_key or not ep.verify
    if tls and not ep.url.startswith("https://"):
        msg = f"{where}: ca_bundle, client_cert, client_key and verify need an https:// URL"
        raise ConfigError(msg)
    if ep.client_key and not ep.client_cert:
        msg = f"{where}: client_key needs client_cert"
        raise ConfigError(msg)


EndpointLike = Endpoint | str | Mapping[str, Any]

_ALIASES = {"key_env": "api_key_env", "concurrency": "max_concurrency"}
_FIELDS = ("url", "model", "weight", "api_key_env", "headers", "rps", "rpm", "tpm",
           "max_concurrency", "timeout", "price_in", "price_out", "ca_bundle", "client_cert",
           "client_key", "verify", "proxy")
_NUMBERS = ("weight", "rps", "rpm", "tpm", "timeout", "concurrency", "max_concurrency",
            "price_in", "price_out")


def _endpoint_from_mapping(spec: Mapping[str, Any], where: str) -> Endpoint:
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        name = _ALIASES.get(key, key)
        if name not in _FIELDS:
            msg = f"{where}: unknown endpoint field {key!r} (expected one of {', '.join(_FIELDS)})"
            raise ConfigError(msg)
        kwargs[name] = value
    if "url" not in kwargs:
        msg = f"{where}: endpoint has no url"
        raise ConfigError(msg)
    url = kwargs.pop("url")
    return Endpoint(url, **kwargs)


def coerce_endpoints(endpoints: EndpointLike | Iterable[EndpointLike] | None) -> list[Endpoint]:
    """Accept URL strings, dicts or ``Endpoint`` objects (or one of them) and validate.

    >>> coerce_endpoints(["http://a:1/v1", {"url": "http://b:2/v1", "weight": 2}])
    [Endpoint('http://a:1/v1'), Endpoint('http://b:2/v1', weight=2)]
    """
    if endpoints is None:
        msg = "no endpoints given: pass endpoints=[...] (URLs, dicts or llmframe.Endpoint)"
        raise ConfigError(msg)
    if isinstance(endpoints, (str, Endpoint, Mapping)):
        endpoints = [endpoints]
    out: list[Endpoint] = []
    for i, spec in enumerate(endpoints):
        where = f"endpoints[{i}]"
        if isinstance(spec, Endpoint):
            out.append(spec)
        elif isinstance(spec, str):
            out.append(parse_endpoint_spec(spec))
        elif isinstance(spec, Mapping):
            out.append(_endpoint_from_mapping(spec, where))
        else:
            kind = type(spec).__name__
            msg = f"{where}: expected a URL string, a dict or an Endpoint, got {kind}"
            raise ConfigError(msg)
    if not out:
        msg = "no endpoints given: pass at least one endpoint"
        raise ConfigError(msg)
    return out


def _number(text: str, key: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"{where}: {key} must be a number, got {text!r}"
        raise ConfigError(msg) from None
    return int(value) if key in ("max_concurrency", "concurrency") and value.is_integer() else value


_PROXY_PASSWORD = re.compile(r"(proxy=(?:[a-zA-Z0-9+.-]+://)?[^:@,/]*):([^@]*)@")


def _check_proxy_commas(spec: str, where: str) -> None:
    """A comma in a proxy password would split the spec there: refuse it first, before a
    part of the password is read as another key."""
    for match in _PROXY_PASSWORD.finditer(spec):
        if "," in match.group(2):
            msg = f"{where}: a comma in a proxy password: write it %2C"
            raise ConfigError(msg)


def _shown_spec(spec: str) -> str:
    """A spec as it may be shown: no URL credentials, no proxy password (which may hold a
    comma).

    >>> _shown_spec("url=http://h/v1,proxy=http://bob:pa,ss@p:1,weight=x")
    'url=http://h/v1,proxy=http://bob:***@p:1,weight=x'
    """
    return redact_url(_PROXY_PASSWORD.sub(r"\1:***@", spec))


def parse_endpoint_spec(spec: str) -> Endpoint:
    """Parse ``URL`` or ``url=URL,weight=3,model=NAME,key_env=VAR,rps=N,rpm=N,tpm=N,
    concurrency=N,timeout=S,price_in=USD,price_out=USD`` (prices per 1M tokens), and for
    https ``ca_bundle=PEM,client_cert=PEM,client_key=PEM,verify=false``; ``proxy=URL`` (or
    ``proxy=none``: direct, whatever HTTPS_PROXY says).

    >>> parse_endpoint_spec("url=http://127.0.0.1:8000/v1,weight=3,concurrency=64")
    Endpoint('http://127.0.0.1:8000/v1', weight=3.0, max_concurrency=64)
    """
    spec = spec.strip()
    if spec.startswith(("http://", "https://")) or "=" not in spec:
        return Endpoint(spec)
    where = f"endpoint spec {_shown_spec(spec)!r}"
    _check_proxy_commas(spec, where)
    fields: dict[str, Any] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            msg = (f"{where}: a part with no key=value (a comma in a password: write it "
                   "%2C)" if "@" in part else
                   f"{where}: expected key=value, got {_shown_spec(part)!r}")
            raise ConfigError(msg)
        if _ALIASES.get(key, key) in {_ALIASES.get(k, k) for k in fields}:
            msg = f"{where}: {key} is given twice"
            raise ConfigError(msg)
        if key in _NUMBERS:
            fields[key] = _number(value.strip(), key, where)
        else:
            fields[key] = value.strip()
    return _endpoint_from_mapping(fields, where)
