"""The official openai SDK accepts the mock server."""

import openai


def test_openai_sdk_talks_to_the_mock(mock_server):
    srv = mock_server(latency=0.01)
    client = openai.OpenAI(base_url=srv.url, api_key="sk-test", max_retries=0)
    chat = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "Hello there"}])
    assert chat.choices[0].message.content == "echo: Hello there"
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage.prompt_tokens == 9  # 2 words + 4 per message + 3
    assert chat.usage.completion_tokens == 4  # echo : Hello there
    comp = client.completions.create(model="mock-model", prompt="Say hi")
    assert comp.choices[0].text == "echo: Say hi"
    assert [m.id for m in client.models.list()] == ["mock-model"]


def test_openai_sdk_sees_429_with_retry_after(mock_server):
    srv = mock_server(script=["429"], retry_after=0)
    client = openai.OpenAI(base_url=srv.url, api_key="sk-test", max_retries=0)
    try:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    except openai.RateLimitError as exc:
        assert exc.response.headers["retry-after"] == "0"
    else:
        raise AssertionError("expected a 429")
