"""Which proxy a request goes through: parsing proxy URLs, the environment's rules
(scheme variables, lowercase first, httpoxy, NO_PROXY) and an explicit choice."""

from __future__ import annotations

import base64

import pytest

from llmframe._exceptions import ConfigError
from llmframe._proxy import Proxy, parse_proxy, proxy_from_env, resolve

SECRET = "s3cr3t-pw"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- parse_proxy -------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "host", "port", "shown"), [
    ("http://proxy.corp:3128", "proxy.corp", 3128, "http://proxy.corp:3128"),
    ("http://proxy.corp:3128/", "proxy.corp", 3128, "http://proxy.corp:3128"),
    ("http://proxy.corp", "proxy.corp", 80, "http://proxy.corp:80"),
    ("HTTP://Proxy.Corp:8080", "proxy.corp", 8080, "http://proxy.corp:8080"),
    ("proxy.corp:3128", "proxy.corp", 3128, "http://proxy.corp:3128"),
    ("  10.1.2.3:8080 ", "10.1.2.3", 8080, "http://10.1.2.3:8080"),
    ("http://[::1]:3128", "::1", 3128, "http://[::1]:3128"),
    ("[fd00::5]:3128", "fd00::5", 3128, "http://[fd00::5]:3128"),
    ("http://[::1]", "::1", 80, "http://[::1]:80"),
])
def test_parse_proxy_without_credentials(url, host, port, shown):
    p = parse_proxy(url, "--proxy")
    assert (p.host, p.port, p.auth, p.shown) == (host, port, None, shown)
    assert repr(p) == f"Proxy({shown!r})" and str(p) == shown


def test_credentials_become_basic_auth_and_are_never_shown():
    p = parse_proxy(f"http://user:{SECRET}@proxy:3128", "HTTPS_PROXY")
    assert p.auth == basic("user", SECRET)
    assert p.shown == "http://user:***@proxy:3128"
    assert repr(p) == "Proxy('http://user:***@proxy:3128')"
    for text in (repr(p), str(p), p.shown, repr([p]), f"{p}", f"{p!r}"):
        assert SECRET not in text and p.auth not in text


def test_bare_credentials_and_user_without_password():
    p = parse_proxy(f"user:{SECRET}@proxy:3128", "--proxy")
    assert (p.host, p.port, p.auth) == ("proxy", 3128, basic("user", SECRET))
    q = parse_proxy("http://alice@proxy:3128", "--proxy")
    assert q.auth == basic("alice", "") and q.shown == "http://alice@proxy:3128"
    assert parse_proxy("http://@proxy:1", "--proxy").auth is None


def test_user_and_password_are_percent_decoded():
    p = parse_proxy("http://a%40b:p%3Aw@h:1", "--proxy")
    assert p.auth == basic("a@b", "p:w")
    assert p.shown == "http://a%40b:***@h:1"
    # an unencoded "@" in the password: the host is after the last "@"
    q = parse_proxy(f"http://u:{SECRET}@x@h:2", "--proxy")
    assert (q.host, q.auth) == ("h", basic("u", f"{SECRET}@x"))
    assert SECRET not in repr(q)


def test_ipv6_with_credentials():
    p = parse_proxy(f"http://u:{SECRET}@[2001:db8::1]:8080", "--proxy")
    assert (p.host, p.port) == ("2001:db8::1", 8080)
    assert p.shown == "http://u:***@[2001:db8::1]:8080"


def test_proxy_is_frozen():
    p = parse_proxy("http://h:1", "--proxy")
    assert isinstance(p, Proxy)
    with pytest.raises(AttributeError):
        p.port = 2  # type: ignore[misc]


@pytest.mark.parametrize(("url", "message"), [
    (f"socks5://u:{SECRET}@h:1080", "SOCKS proxies are not supported"),
    (f"socks5h://u:{SECRET}@h:1080", "use an HTTP proxy (CONNECT)"),
    ("socks4://h:1080", "SOCKS proxies are not supported"),
    (f"https://u:{SECRET}@h:3128", "a proxy reached over https is not supported"),
    ("ftp://h:21", "'ftp' is not supported"),
    (f"http://u:{SECRET}@:3128", "no host"),
    ("http://", "no host"),
    (f"http://u:{SECRET}@h:port", "not a number"),
    ("http://h:0", "out of range"),
    ("http://h:65536", "out of range"),
    ("http://h:123456", "not a number"),
    ("http://h:-1", "not a number"),
    (f"http://u:{SECRET}@h:3128/path", "has no path"),
    ("http://h:3128?x=1", "has no path"),
    ("http://::1:3128", "brackets"),
    ("http://[::1:3128", "malformed"),
    ("http://[nothost]:1", "not an IPv6 address"),
    ("http://h h:1", "not a host name"),
])
def test_bad_proxies_are_refused_naming_where_and_never_the_password(url, message):
    with pytest.raises(ConfigError) as info:
        parse_proxy(url, "endpoint 'a'")
    text = str(info.value)
    assert message in text and "endpoint 'a'" in text
    assert SECRET not in text


def test_the_message_shows_the_redacted_url():
    with pytest.raises(ConfigError, match=r"'socks5://u:\*\*\*@h:1080' \(HTTPS_PROXY\)"):
        parse_proxy(f"socks5://u:{SECRET}@h:1080", "HTTPS_PROXY")
    # a password with a "/" that cuts the URL short is still hidden
    with pytest.raises(ConfigError) as info:
        parse_proxy(f"http://u:{SECRET}/x@h:1", "--proxy")
    assert SECRET not in str(info.value) and "x@h:1" not in str(info.value)


# --- proxy_from_env ------------------------------------------------------------------------

def host_of(url: str, environ: dict[str, str]) -> str | None:
    p = proxy_from_env(url, environ)
    return None if p is None else p.host


def test_scheme_variables():
    env = {"HTTPS_PROXY": "http://sec:1", "HTTP_PROXY": "http://plain:2"}
    assert host_of("https://api.example.com/v1", env) == "sec"
    assert host_of("http://api.example.com/v1", env) == "plain"
    assert host_of("https://x/", {"HTTP_PROXY": "http://plain:2"}) is None
    assert host_of("http://x/", {"HTTPS_PROXY": "http://sec:1"}) is None
    assert host_of("http://x/", {}) is None


def test_lowercase_wins_over_uppercase():
    env = {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2",
           "http_proxy": "http://low:3", "HTTP_PROXY": "http://up:4",
           "all_proxy": "http://low:5", "ALL_PROXY": "http://up:6"}
    assert host_of("https://x/", env) == "low"
    assert proxy_from_env("http://x/", env).port == 3  # type: ignore[union-attr]
    assert host_of("https://x/", {"all_proxy": "http://low:5", "ALL_PROXY": "http://up:6"}) \
        == "low"


def test_all_proxy_is_the_fallback():
    env = {"ALL_PROXY": "http://every:1", "HTTP_PROXY": "http://plain:2"}
    assert host_of("https://x/", env) == "every"
    assert host_of("http://x/", env) == "plain"


def test_empty_or_blank_values_count_as_unset():
    env = {"https_proxy": "  ", "HTTPS_PROXY": "http://up:1", "no_proxy": "",
           "NO_PROXY": "x.corp"}
    assert host_of("https://api.example.com/", env) == "up"
    assert host_of("https://x.corp/", env) is None  # NO_PROXY used: no_proxy is empty
    assert host_of("https://x/", {"HTTPS_PROXY": "", "ALL_PROXY": "\t"}) is None


def test_httpoxy_uppercase_http_proxy_is_ignored_under_cgi():
    env = {"HTTP_PROXY": "http://attacker:1", "REQUEST_METHOD": "GET"}
    assert host_of("http://x/", env) is None
    assert host_of("http://x/", {**env, "http_proxy": "http://mine:2"}) == "mine"
    assert host_of("http://x/", {**env, "ALL_PROXY": "http://all:3"}) == "all"
    assert host_of("https://x/", {**env, "HTTPS_PROXY": "http://sec:4"}) == "sec"


def test_the_variable_is_named_in_errors():
    with pytest.raises(ConfigError, match=r"\(https_proxy\)") as info:
        proxy_from_env("https://x/", {"https_proxy": f"socks5://u:{SECRET}@h:1"})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match=r"\(ALL_PROXY\)"):
        proxy_from_env("http://x/", {"ALL_PROXY": "https://h:1"})


def test_localhost_is_not_exempt_unless_no_proxy_says_so():
    env = {"HTTP_PROXY": "http://p:1", "HTTPS_PROXY": "http://p:1"}
    assert host_of("http://localhost:8000/v1", env) == "p"
    assert host_of("http://127.0.0.1:8000/v1", env) == "p"
    env["NO_PROXY"] = "localhost,127.0.0.1"
    assert host_of("http://localhost:8000/v1", env) is None
    assert host_of("http://127.0.0.1:8000/v1", env) is None


# --- NO_PROXY -----------------------------------------------------------------------------

def bypassed(url: str, no_proxy: str, name: str = "NO_PROXY") -> bool:
    env = {"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:1", name: no_proxy}
    return proxy_from_env(url, env) is None


@pytest.mark.parametrize("entry", ["example.com", ".example.com", "*.example.com",
                                   "EXAMPLE.com", "example.com."])
def test_domain_entries_match_the_host_and_its_subdomains(entry):
    assert bypassed("https://example.com/v1", entry)
    assert bypassed("https://api.example.com/v1", entry)
    assert bypassed("https://A.B.Example.COM/v1", entry)
    assert not bypassed("https://badexample.com/v1", entry)
    assert not bypassed("https://example.com.evil.net/v1", entry)


def test_entries_are_separated_by_commas_or_whitespace():
    value = " a.corp,  b.corp\tc.corp\n,,d.corp "
    for host in ("a.corp", "b.corp", "c.corp", "d.corp"):
        assert bypassed(f"https://{host}/", value)
    assert not bypassed("https://e.corp/", value)


def test_star_alone_means_no_proxy_for_anything():
    assert bypassed("https://anything.example/", "*")
    assert bypassed("http://10.0.0.1:5/", "*")
    assert bypassed("https://x/", "foo.corp, *")


def test_ip_and_cidr_entries():
    assert bypassed("http://10.1.2.3:8000/", "10.1.2.3")
    assert not bypassed("http://10.1.2.4:8000/", "10.1.2.3")
    assert bypassed("http://10.200.3.4/", "10.0.0.0/8")
    assert not bypassed("http://11.0.0.1/", "10.0.0.0/8")
    assert bypassed("http://192.168.1.77/", "192.168.1.0/24")
    assert not bypassed("http://0.10.0.0.1.nip.io/", "10.0.0.0/8")  # names are not IPs
    assert not bypassed("http://10.0.0.1/", "0.0.1")  # no suffix matching of IPs


def test_ipv6_entries():
    assert bypassed("http://[::1]:8000/", "::1")
    assert bypassed("http://[::1]:8000/", "[::1]")
    assert bypassed("http://[::1]:8000/", "[0:0::1]")
    assert bypassed("http://[fd00::5]/", "fd00::/8")
    assert bypassed("http://[fd12:3456::1]/", "[fd00::]/8")
    assert not bypassed("http://[fe80::1]/", "fd00::/8")
    assert not bypassed("http://10.0.0.1/", "fd00::/8")
    assert bypassed("http://[::1]:8000/", "[::1]:8000")
    assert not bypassed("http://[::1]:8001/", "[::1]:8000")


def test_port_entries_match_only_that_port():
    assert bypassed("http://h.corp:8000/", "h.corp:8000")
    assert not bypassed("http://h.corp:8001/", "h.corp:8000")
    assert bypassed("https://h.corp/", "h.corp:443")  # the default port of https
    assert not bypassed("http://h.corp/", "h.corp:443")
    assert bypassed("http://h.corp/", "h.corp:80")
    assert bypassed("http://10.0.0.1:5000/", "10.0.0.1:5000")
    assert not bypassed("http://10.0.0.1:5001/", "10.0.0.1:5000")


def test_invalid_entries_are_ignored():
    value = "h.corp:notaport, [::1, 10.0.0.0/99, ., *., [], good.corp"
    assert bypassed("https://good.corp/", value)
    assert not bypassed("https://h.corp/", value)
    assert not bypassed("http://10.0.0.1/", value)
    assert not bypassed("http://[::1]/", value)


def test_lowercase_no_proxy_wins():
    env = {"HTTPS_PROXY": "http://p:1", "no_proxy": "a.corp", "NO_PROXY": "b.corp"}
    assert proxy_from_env("https://a.corp/", env) is None
    assert proxy_from_env("https://b.corp/", env) is not None
    assert bypassed("https://a.corp/", "a.corp", name="no_proxy")


def test_a_bypassed_target_does_not_parse_the_proxy():
    env = {"HTTPS_PROXY": "socks5://h:1", "NO_PROXY": "x.corp"}
    assert proxy_from_env("https://x.corp/", env) is None
    with pytest.raises(ConfigError):
        proxy_from_env("https://y.corp/", env)


# --- resolve -------------------------------------------------------------------------------

def test_resolve_none_and_true_use_the_environment():
    env = {"HTTPS_PROXY": "http://envp:3128", "NO_PROXY": "direct.corp"}
    for choice in (None, True):
        assert resolve("https://api.x/v1", choice, env).host == "envp"  # type: ignore[union-attr]
        assert resolve("https://direct.corp/v1", choice, env) is None


def test_resolve_false_is_direct_whatever_the_environment():
    env = {"HTTPS_PROXY": "http://envp:3128", "ALL_PROXY": "http://all:1"}
    assert resolve("https://api.x/v1", False, env) is None
    assert resolve("http://api.x/v1", False, env) is None


def test_resolve_an_explicit_proxy_ignores_the_environment_and_no_proxy():
    env = {"HTTPS_PROXY": "http://envp:3128", "NO_PROXY": "*"}
    for url in ("https://api.x/v1", "http://localhost:8000/v1", "http://[::1]:1/"):
        p = resolve(url, f"http://u:{SECRET}@mine:8080", env)
        assert p is not None and (p.host, p.port) == ("mine", 8080)
        assert p.auth == basic("u", SECRET)


def test_resolve_names_where_in_errors():
    with pytest.raises(ConfigError, match=r"\(--proxy\)"):
        resolve("https://x/", "socks5://h:1", {})
    with pytest.raises(ConfigError, match=r"\(endpoint 'a'\)") as info:
        resolve("https://x/", f"https://u:{SECRET}@h:1", {}, where="endpoint 'a'")
    assert SECRET not in str(info.value)
