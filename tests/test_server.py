"""A live `nemoh serve` subprocess on 127.0.0.1, driven by the real `openai` client and raw HTTP."""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from net import free_port

from scripted import SCRIPTS, WEATHER_TOOL, build_scripted



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = build_scripted(tmp_path_factory.mktemp("serve") / "scripted")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nemoh.cli.main", "serve", str(path), "--port", str(port),
                             "--served-model-name", "tiny", "--max-model-len", "1024", "--max-num-seqs", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read())
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def _post(server, route, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(server + route, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    with urllib.request.urlopen(server + "/health") as r:
        assert json.loads(r.read()) == {"status": "ok"}


def test_chat_reasoning_split(client):
    r = client.chat.completions.create(model="tiny", messages=SCRIPTS[0][0], temperature=0, max_tokens=100)
    msg = r.choices[0].message
    assert msg.reasoning_content == "The user wants a greeting.\n"
    assert msg.content == "\nHello there!"
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 10


def test_chat_reasoning_off(client):
    r = client.chat.completions.create(model="tiny", messages=SCRIPTS[1][0], temperature=0, max_tokens=100,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content == "Hi! Short answer." and not getattr(r.choices[0].message, "reasoning_content", None)


@pytest.mark.parametrize("thinking", [True, False])
def test_chat_streaming_equals_non_streaming(client, thinking):
    kw = {"extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}}}
    messages = SCRIPTS[0 if thinking else 1][0]
    full = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=100, **kw)
    stream = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=100,
                                            stream=True, stream_options={"include_usage": True}, **kw)
    reasoning, content, finish, usage = "", "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            reasoning += getattr(ch.delta, "reasoning_content", None) or ""
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
    msg = full.choices[0].message
    assert content == msg.content and reasoning == (getattr(msg, "reasoning_content", None) or "")
    assert finish == "stop" and usage.completion_tokens == full.usage.completion_tokens


def test_reasoning_budget(client):
    r = client.chat.completions.create(model="tiny", messages=SCRIPTS[0][0], temperature=0, max_tokens=40,
                                       extra_body={"max_thinking_tokens": 4})
    msg = r.choices[0].message
    assert msg.reasoning_content == "The "  # 4 byte tokens of thought, then </think> was forced
    assert msg.content and r.usage.completion_tokens <= 40


def test_tool_calls_are_json(client):
    r = client.chat.completions.create(model="tiny", messages=SCRIPTS[2][0], tools=[WEATHER_TOOL], temperature=0,
                                       max_tokens=200)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3, "metric": True}
    assert "True" not in call.function.arguments and choice.message.reasoning_content == "Call the tool.\n"
    stream = client.chat.completions.create(model="tiny", messages=SCRIPTS[2][0], tools=[WEATHER_TOOL], temperature=0,
                                            max_tokens=200, stream=True)
    calls = [tc for chunk in stream for ch in chunk.choices for tc in (ch.delta.tool_calls or [])]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "days": 3, "metric": True}


def test_completions_n_stop_logprobs(client):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, n=3, temperature=1.0, seed=7, logprobs=2)
    assert len(r.choices) == 3 and all(len(c.logprobs.token_logprobs) == 8 for c in r.choices)
    assert all(len(c.logprobs.top_logprobs[0]) == 2 for c in r.choices)
    again = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, n=3, temperature=1.0, seed=7)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]
    chat = client.chat.completions.create(model="tiny", messages=SCRIPTS[1][0], temperature=0, max_tokens=100,
                                          stop=["Short"], extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert chat.choices[0].message.content == "Hi! " and chat.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Hello", max_tokens=8, temperature=0, stream=True))
    assert streamed == client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0).choices[0].text
    stream = client.chat.completions.create(model="tiny", messages=SCRIPTS[1][0], temperature=0, max_tokens=100,
                                            stop=["Short"], stream=True,
                                            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hi! "


def test_concurrent_requests(client):
    def one(i):
        return client.completions.create(model="tiny", prompt=f"request {i}", max_tokens=12, temperature=0).choices[0].text
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(one, range(6)))
    assert parallel == [one(i) for i in range(6)]


def test_bad_requests_get_4xx_and_server_keeps_serving(client, server):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=-5)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x" * 2000, max_tokens=5)
    assert e.value.body["param"] == "prompt"
    status, body = _post(server, "/v1/chat/completions", None, raw=b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = _post(server, "/v1/chat/completions", {"model": "tiny", "messages": "hi"})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = _post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "temperature": "hot"})
    assert status == 400 and body["error"]["param"] == "temperature"
    r = client.chat.completions.create(model="tiny", messages=SCRIPTS[0][0], temperature=0, max_tokens=100)
    assert r.choices[0].message.content == "\nHello there!"
