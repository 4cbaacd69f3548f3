import pytest

from llmframe import ConfigError, Endpoint, RunConfig
from llmframe._config import coerce_endpoints, parse_endpoint_spec


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"url": "ftp://x/v1"}, "http:// or https://"),
        ({"url": "127.0.0.1:8000"}, "http:// or https://"),
        ({"url": "http://"}, "with a host"),
        ({"url": "http://h:99999/v1"}, "invalid port"),
        ({"url": "http://h/v1", "weight": 0}, "weight must be > 0"),
        ({"url": "http://h/v1", "weight": -1}, "weight must be > 0"),
        ({"url": "http://h/v1", "weight": float("nan")}, "weight must be > 0"),
        ({"url": "http://h/v1", "rps": 0}, "rps must be > 0"),
        ({"url": "http://h/v1", "max_concurrency": 1.5}, "max_concurrency must be an integer"),
        ({"url": "http://h/v1", "timeout": 0}, "timeout must be > 0"),
        ({"url": "http://h/v1", "api_key_env": "sk-abc123"}, "NAME of an environment variable"),
    ],
)
def test_endpoint_rejects_bad_values_naming_the_endpoint(kwargs, fragment):
    url = kwargs.pop("url")
    with pytest.raises(ConfigError, match=fragment) as info:
        Endpoint(url, **kwargs)
    if "://" in url and url != "http://":
        assert url.split("://")[1][:3] in str(info.value)


def test_endpoint_is_keyword_only_past_url():
    with pytest.raises(TypeError):
        Endpoint("http://h/v1", "model")  # type: ignore[misc]


def test_repr_never_shows_secrets(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-supersecret")
    ep = Endpoint("http://user:pw@h:1/v1", api_key_env="MY_KEY",
                  headers={"X-Api-Key": "sk-supersecret", "X-Trace": "on"})
    text = repr(ep) + repr(RunConfig([ep]))
    assert "sk-supersecret" not in text
    assert "pw" not in text
    assert "MY_KEY" in text and "X-Trace" in text


def test_request_url_appends_api_path_unless_given():
    assert Endpoint("http://h/v1").request_url("chat") == "http://h/v1/chat/completions"
    assert Endpoint("http://h/v1/").request_url("completions") == "http://h/v1/completions"
    full = "http://h/v1/chat/completions"
    assert Endpoint(full).request_url("chat") == full


def test_coerce_accepts_strings_dicts_and_endpoints():
    eps = coerce_endpoints(["http://a/v1", {"url": "http://b/v1", "weight": 2, "key_env": "K",
                                             "concurrency": 3}, Endpoint("http://c/v1")])
    assert [e.url for e in eps] == ["http://a/v1", "http://b/v1", "http://c/v1"]
    assert eps[1].weight == 2 and eps[1].api_key_env == "K" and eps[1].max_concurrency == 3
    assert coerce_endpoints("http://a/v1")[0].url == "http://a/v1"


@pytest.mark.parametrize(
    "bad", [None, [], [{"weight": 2}], [{"url": "http://a", "wieght": 2}], [3]]
)
def test_coerce_rejects_with_a_clear_message(bad):
    with pytest.raises(ConfigError, match=r"endpoint|endpoints"):
        coerce_endpoints(bad)


def test_spec_key_value_form():
    ep = parse_endpoint_spec("url=http://127.0.0.1:8000/v1,weight=3,model=m,key_env=K,rps=5,"
                             "concurrency=7,timeout=2")
    assert (ep.weight, ep.model, ep.api_key_env, ep.rps, ep.max_concurrency, ep.timeout) == (
        3, "m", "K", 5, 7, 2)
    with pytest.raises(ConfigError, match="weight must be a number"):
        parse_endpoint_spec("url=http://h/v1,weight=heavy")
    with pytest.raises(ConfigError, match="unknown endpoint field 'colour'"):
        parse_endpoint_spec("url=http://h/v1,colour=red")


def test_run_config_validates_before_anything_is_sent(monkeypatch):
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    with pytest.raises(ConfigError, match="NOT_SET_KEY is not set"):
        RunConfig([{"url": "http://h/v1", "api_key_env": "NOT_SET_KEY"}])
    with pytest.raises(ConfigError, match="rps must be > 0"):
        RunConfig(["http://h/v1"], rps=0)
    with pytest.raises(ConfigError, match="api must be one of"):
        RunConfig(["http://h/v1"], api="embeddings")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="params may not set messages"):
        RunConfig(["http://h/v1"], params={"messages": []})
