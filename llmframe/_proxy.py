"""Which HTTP proxy a request goes through (pure functions, no I/O).

A proxy is given explicitly (``--proxy``, an endpoint's ``proxy``) or taken from the
environment as curl, requests and httpx do: ``https_proxy`` / ``HTTPS_PROXY`` for https
targets, ``http_proxy`` / ``HTTP_PROXY`` for http ones (the uppercase one ignored under
CGI, when ``REQUEST_METHOD`` is set: "httpoxy"), then ``all_proxy`` / ``ALL_PROXY``;
lowercase wins; ``no_proxy`` / ``NO_PROXY`` names the hosts reached directly.

Only HTTP proxies: https targets go through them with ``CONNECT`` (encrypted end to end);
http targets are sent to them in absolute form. The password of a proxy URL is never
shown: :class:`Proxy` displays ``http://user:***@host:port``.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ._exceptions import ConfigError

__all__ = ["Proxy", "check_proxy", "parse_proxy", "proxy_from_env", "resolve", "shown_proxy"]

_SOCKS = {"socks", "socks4", "socks4a", "socks5", "socks5h"}
_PORT = re.compile(r"[0-9]{1,5}")
_HOST = re.compile(r"[^\s/?#@\[\]:%]+")
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where it listens, its ``Proxy-Authorization`` value (or None) and
    how it may be shown (no password).

    >>> p = parse_proxy("http://user:secret@proxy:3128", "--proxy")
    >>> p
    Proxy('http://user:***@proxy:3128')
    >>> (p.host, p.port, p.auth, str(p))
    ('proxy', 3128, 'Basic dXNlcjpzZWNyZXQ=', 'http://user:***@proxy:3128')
    """

    host: str
    port: int
    auth: str | None = field(repr=False)
    shown: str

    def __repr__(self) -> str:
        return f"Proxy({self.shown!r})"

    def __str__(self) -> str:
        return self.shown


def _redacted(url: str) -> str:
    """``url`` as it may be shown: whatever follows the user name up to the last ``@``
    becomes ``***``.

    >>> _redacted("http://u:p@ss/w@h:1"), _redacted("u@h"), _redacted("h:1")
    ('http://u:***@h:1', 'u@h', 'h:1')
    """
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    if "@" not in rest:
        return url
    userinfo, _, hostpart = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{hostpart}"


def _split_host(hostport: str, bad: str) -> tuple[str, str]:
    """``(host, port text)`` of ``host[:port]`` / ``[v6][:port]``; raises ConfigError."""
    if hostport.startswith("["):
        inside, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigError(f"{bad}: a malformed [IPv6] host")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise ConfigError(f"{bad}: {inside!r} is not an IPv6 address") from None
        return inside, after[1:]
    host, colon, port = hostport.rpartition(":")
    if not colon:
        host, port = hostport, ""
    if ":" in host:
        raise ConfigError(f"{bad}: write an IPv6 address in brackets, http://[::1]:3128")
    if not host:
        raise ConfigError(f"{bad}: no host; give http://HOST:PORT")
    if not _HOST.fullmatch(host):
        raise ConfigError(f"{bad}: {host!r} is not a host name")
    return host, port


def _check_scheme(scheme: str, bad: str) -> None:
    if scheme in _SOCKS:
        raise ConfigError(f"{bad}: SOCKS proxies are not supported; use an HTTP proxy "
                          "(CONNECT)")
    if scheme == "https":
        raise ConfigError(f"{bad}: a proxy reached over https is not supported; give "
                          "http://HOST:PORT — https requests still go through it encrypted "
                          "end to end with CONNECT")
    if scheme != "http":
        raise ConfigError(f"{bad}: the proxy scheme {scheme!r} is not supported; give "
                          "http://HOST:PORT")


def parse_proxy(url: str, where: str) -> Proxy:
    r"""The proxy of ``url`` (``http://[user[:password]@]host[:port]``, or the same without
    ``http://``); ``where`` names its source in errors, which never show the password.

    >>> parse_proxy("proxy.corp:8080", "HTTPS_PROXY")
    Proxy('http://proxy.corp:8080')
    >>> p = parse_proxy("http://a%40b:p%3Aw@[::1]:3128/", "--proxy")
    >>> p.host, p.port, base64.b64decode(p.auth.split()[1])
    ('::1', 3128, b'a@b:p:w')
    >>> try:
    ...     parse_proxy("socks5://u:pw@h:1080", "ALL_PROXY")
    ... except ConfigError as e:
    ...     print(str(e).replace("; ", ";\n"))
    proxy 'socks5://u:***@h:1080' (ALL_PROXY): SOCKS proxies are not supported;
    use an HTTP proxy (CONNECT)
    """
    text = url.strip()
    bad = f"proxy {_redacted(text)!r} ({where})"
    if "://" not in text:
        text = "http://" + text
    scheme, _, rest = text.partition("://")
    _check_scheme(scheme.lower(), bad)
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, path = rest[:cut], rest[cut:]
    if path not in ("", "/"):
        hint = (" (a / ? # or @ in the password must be percent-encoded: %2F %3F %23 %40)"
                if "@" in path else "")
        raise ConfigError(f"{bad}: a proxy URL has no path; give http://HOST:PORT{hint}")
    userinfo, at, hostport = netloc.rpartition("@")
    host, port_text = _split_host(hostport, bad)
    host = host.lower()
    if port_text and not _PORT.fullmatch(port_text):
        raise ConfigError(f"{bad}: the port is not a number")
    port = int(port_text) if port_text else 80
    if not 0 < port < 65536:
        raise ConfigError(f"{bad}: the port {port} is out of range (1-65535)")
    netloc_shown = f"[{host}]" if ":" in host else host
    netloc_shown = f"{netloc_shown}:{port}"
    auth = None
    if at and userinfo:
        raw_user, colon, raw_password = userinfo.partition(":")
        pair = f"{unquote(raw_user)}:{unquote(raw_password)}".encode()
        auth = "Basic " + base64.b64encode(pair).decode("ascii")
        netloc_shown = f"{raw_user}{':***' if colon else ''}@{netloc_shown}"
    return Proxy(host, port, auth, f"http://{netloc_shown}")


def _env(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set to something other than blanks: ``(name, value)``."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _ip(text: str) -> _IP | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _entry_matches(entry: str, host: str, ip: _IP | None, port: int) -> bool:
    """Whether one ``NO_PROXY`` entry covers ``host`` (lowercase; ``ip`` if it is one) on
    ``port``; an invalid entry covers nothing."""
    if "/" in entry:  # CIDR
        try:
            network = ipaddress.ip_network(entry.replace("[", "").replace("]", ""),
                                           strict=False)
        except ValueError:
            return False
        return ip is not None and ip.version == network.version and ip in network
    want_port: str | None = None
    if entry.startswith("["):
        pattern, bracket, after = entry[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return False
        want_port = after[1:] or None
    elif entry.count(":") == 1:
        pattern, _, want_port = entry.partition(":")
    else:
        pattern = entry
    if want_port is not None and (not _PORT.fullmatch(want_port) or int(want_port) != port):
        return False
    pattern = pattern.removeprefix("*").removeprefix(".").rstrip(".").lower()
    if not pattern:
        return False
    entry_ip = _ip(pattern)
    if ip is not None or entry_ip is not None:
        return ip is not None and ip == entry_ip
    return host == pattern or host.endswith("." + pattern)


def _bypass(url: str, environ: Mapping[str, str]) -> bool:
    """Whether ``NO_PROXY`` says ``url`` is reached directly."""
    found = _env(environ, "no_proxy", "NO_PROXY")
    if found is None:
        return False
    entries = [e for e in re.split(r"[\s,]+", found[1]) if e]
    if "*" in entries:
        return True
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    ip = _ip(host.split("%")[0])
    return any(_entry_matches(e, host, ip, port) for e in entries)


def proxy_from_env(url: str, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy the environment sets for ``url`` (http:// or https://), or None.

    >>> env = {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "internal.corp,10.0.0.0/8"}
    >>> proxy_from_env("https://api.openai.com/v1", env)
    Proxy('http://p:3128')
    >>> proxy_from_env("https://llm.internal.corp/v1", env) is None
    True
    >>> proxy_from_env("http://api.openai.com/v1", env) is None  # no http_proxy
    True
    """
    scheme = urlsplit(url).scheme.lower()
    names: tuple[str, ...] = ()
    if scheme == "https":
        names = ("https_proxy", "HTTPS_PROXY")
    elif scheme == "http":  # under CGI, HTTP_PROXY may come from a request's "Proxy:"
        names = ("http_proxy",) if "REQUEST_METHOD" in environ else ("http_proxy",
                                                                      "HTTP_PROXY")
    found = _env(environ, *names, "all_proxy", "ALL_PROXY")
    if found is None or _bypass(url, environ):
        return None
    name, value = found
    return parse_proxy(value, name)


def resolve(url: str, proxy: str | bool | None, environ: Mapping[str, str],
            where: str = "--proxy") -> Proxy | None:
    """The proxy for ``url``: from the environment (``proxy`` None or True), none
    (False), or the one given (a URL, used for every target, whatever ``NO_PROXY`` says).

    >>> env = {"https_proxy": "http://envproxy:3128", "no_proxy": "*"}
    >>> resolve("https://h/v1", None, env) is None, resolve("https://h/v1", False, env)
    (True, None)
    >>> resolve("https://h/v1", "http://mine:8080", env)
    Proxy('http://mine:8080')
    """
    if proxy is False:
        return None
    if proxy is None or proxy is True:
        return proxy_from_env(url, environ)
    return parse_proxy(proxy, where)


_DIRECT = {"", "none", "no", "false", "off", "direct"}


def check_proxy(value: object, where: str) -> str | bool | None:
    """A ``proxy=`` option, checked: None (the environment decides), False (direct; also
    ``"none"``/``"direct"``/``"false"`` in a spec or TOML), or a proxy URL.

    >>> check_proxy("none", "x"), check_proxy(True, "x"), check_proxy(" http://p:1 ", "x")
    (False, None, 'http://p:1')
    """
    if value is None or value is True:
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() in _DIRECT):
        return False
    if not isinstance(value, str):
        msg = f"{where}: a proxy URL (http://HOST:PORT), none, or false; got {value!r}"
        raise ConfigError(msg)
    parse_proxy(value.strip(), where)
    return value.strip()


def shown_proxy(value: str | bool | None) -> str:
    """A ``proxy=`` option as it may be shown (no password).

    >>> shown_proxy("http://me:secret@p:3128"), shown_proxy(False), shown_proxy(None)
    ('http://me:***@p:3128', 'none', 'from the environment')
    """
    if value is None:
        return "from the environment"
    if value is False or value is True:
        return "none"
    return str(parse_proxy(value, "proxy"))
