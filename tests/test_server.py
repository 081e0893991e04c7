"""A live `nemoh serve` subprocess on 127.0.0.1, driven by the real `openai` client and raw HTTP."""
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from net import serving
from scripted import SCRIPTS, WEATHER_TOOL, build_scripted


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cached = os.environ.get("NEMOH_TEST_SCRIPTED")   # a checkpoint build_scripted wrote before (local iteration)
    path = Path(cached) if cached else build_scripted(tmp_path_factory.mktemp("serve") / "scripted")
    with serving(path, "--served-model-name", "tiny", "--max-model-len", "1024", "--max-num-seqs", "8") as (_, base):
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def metrics(server) -> dict[str, float]:
    """GET /metrics (Prometheus text) -> {"num_requests_running": 0, ...}."""
    with urllib.request.urlopen(server + "/metrics", timeout=30) as r:
        lines = r.read().decode().splitlines()
    return {k.removeprefix("nemoh:"): float(v) for k, v in (ln.split() for ln in lines if not ln.startswith("#"))}


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
    assert metrics(server)["num_free_slots"] == 8


def test_chat_reasoning_split(client):
    r = client.chat.completions.create(model="tiny", messages=SCRIPTS[0][0], temperature=0, max_tokens=100)
    msg = r.choices[0].message
    assert msg.reasoning_content == "The user wants a greeting.\n"
    assert msg.content == "\nHello there!"
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 10


def test_chat_reasoning_off(client):
    r = client.chat.completions.create(model="tiny", messages=SCRIPTS[1][0], temperature=0, max_tokens=100,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert (r.choices[0].message.content == "Hi! Short answer."
            and not getattr(r.choices[0].message, "reasoning_content", None))


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


TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def _calls(r) -> tuple[str, list[str]]:
    choice = r.choices[0]
    return choice.finish_reason, [c.function.name for c in choice.message.tool_calls or []]


def test_tool_choice_is_enforced(client):
    """none: no tools in the prompt, no parsing, even where the model was trained to call one; a named function:
    that function, also where the model was trained to call another; "required": a tool call (the server writes
    the call's opening, the model the rest). A name not in tools is a 400 naming tool_choice."""
    weather, hi = SCRIPTS[2][0], SCRIPTS[0][0]
    kw = dict(model="tiny", temperature=0, max_tokens=200, tools=[WEATHER_TOOL, TIME_TOOL])
    auto = client.chat.completions.create(messages=weather, **kw)
    assert _calls(auto) == ("tool_calls", ["get_weather"])
    none = client.chat.completions.create(messages=weather, tool_choice="none", **kw)
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason != "tool_calls"
    assert none.usage.prompt_tokens < auto.usage.prompt_tokens          # the tools were left out of the prompt
    for messages in (hi, weather):
        named = client.chat.completions.create(
            messages=messages, tool_choice={"type": "function", "function": {"name": "get_time"}}, **kw)
        assert _calls(named) == ("tool_calls", ["get_time"])
        assert isinstance(json.loads(named.choices[0].message.tool_calls[0].function.arguments), dict)
        required = client.chat.completions.create(messages=messages, tool_choice="required", **kw)
        finish, names = _calls(required)
        assert finish == "tool_calls" and len(names) >= 1
        stream = client.chat.completions.create(messages=messages, tool_choice="required", stream=True, **kw)
        streamed = [tc for chunk in stream for ch in chunk.choices for tc in (ch.delta.tool_calls or [])]
        assert [(c.function.name, c.function.arguments) for c in streamed] == \
            [(c.function.name, c.function.arguments) for c in required.choices[0].message.tool_calls]
    for choice in ({"type": "function", "function": {"name": "get_stock"}}, "required"):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(messages=hi, tool_choice=choice,
                                           **{**kw, "tools": [WEATHER_TOOL] if "function" in choice else None})
        assert e.value.body["param"] == "tool_choice"


def test_completions_n_stop_logprobs(client):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, n=3, temperature=1.0, seed=7, logprobs=2)
    assert len(r.choices) == 3 and all(len(c.logprobs.token_logprobs) == 8 for c in r.choices)
    assert all(len(c.logprobs.top_logprobs[0]) == 2 for c in r.choices)
    again = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, n=3, temperature=1.0, seed=7)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]
    chat = client.chat.completions.create(model="tiny", messages=SCRIPTS[1][0], temperature=0, max_tokens=100,
                                          stop=["Short"],
                                          extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert chat.choices[0].message.content == "Hi! " and chat.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Hello", max_tokens=8, temperature=0, stream=True))
    assert streamed == client.completions.create(model="tiny", prompt="Hello", max_tokens=8,
                                                 temperature=0).choices[0].text
    stream = client.chat.completions.create(model="tiny", messages=SCRIPTS[1][0], temperature=0, max_tokens=100,
                                            stop=["Short"], stream=True,
                                            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hi! "


def test_completions_batched_prompts(client):
    """A list of prompts (strings or token-id lists) is one request per prompt: choices prompt-major
    (index = prompt * n + sample, as OpenAI numbers them), each equal to that prompt sent alone; usage summed."""
    prompts, n = ["Hello", "Say hi", "request 3"], 2
    kw = dict(model="tiny", max_tokens=6, n=n, temperature=1.0, seed=11, logprobs=1)
    alone = [client.completions.create(prompt=p, **kw) for p in prompts]
    batch = client.completions.create(prompt=prompts, **kw)
    assert [c.index for c in batch.choices] == list(range(len(prompts) * n))
    assert [c.text for c in batch.choices] == [c.text for a in alone for c in a.choices]
    # batched with other prompts, fp32 reductions run in another order: logprobs agree to ~1e-6, not bitwise
    assert [lp for c in batch.choices for lp in c.logprobs.token_logprobs] == pytest.approx(
        [lp for a in alone for c in a.choices for lp in c.logprobs.token_logprobs], abs=1e-4)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert getattr(batch.usage, key) == sum(getattr(a.usage, key) for a in alone)
    ids = [[100, 101, 102], [103, 104]]
    by_ids = client.completions.create(prompt=ids, **kw)
    assert [c.text for c in by_ids.choices] == \
        [c.text for p in ids for c in client.completions.create(prompt=p, **kw).choices]
    texts: dict[int, str] = {}
    usage = None
    for chunk in client.completions.create(prompt=prompts, stream=True, stream_options={"include_usage": True}, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
        usage = chunk.usage or usage
    assert [texts[i] for i in range(len(prompts) * n)] == [c.text for c in batch.choices]
    assert usage.total_tokens == batch.usage.total_tokens
    with pytest.raises(openai.BadRequestError) as e:     # the prompt that cannot fit is named by its place
        client.completions.create(model="tiny", prompt=["x", "x" * 2000], max_tokens=5)
    assert e.value.body["param"] == "prompt[1]"


def test_concurrent_requests(client):
    def one(i):
        return client.completions.create(model="tiny", prompt=f"request {i}", max_tokens=12,
                                         temperature=0).choices[0].text
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


# ---- hostile clients: error contract, isolation, disconnects, complete streams, a free event loop -----------------
import httpx  # noqa: E402

GOOD_CHAT = {"model": "tiny", "messages": SCRIPTS[0][0], "temperature": 0, "max_tokens": 100}
GOOD_ANSWER = "\nHello there!"


def _strict(text: str):
    """json.loads that fails on NaN/Infinity, which are not JSON."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in a response"))


def _error_shape(status: int, text: str) -> dict:
    body = _strict(text)
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str), body
    assert status < 500, body
    return err


def _sse(text: str) -> list[dict]:
    """SSE body -> its JSON events; it must end with [DONE]."""
    data = [ln[len("data: "):] for ln in text.splitlines() if ln.startswith("data: ")]
    assert data and data[-1] == "[DONE]", text[-300:]
    return [_strict(d) for d in data[:-1]]


def test_error_contract_for_every_route(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        for method, route, status in [("GET", "/nope", 404), ("POST", "/v1/nope", 404),
                                      ("GET", "/v1/chat/completions", 405),
                                      ("DELETE", "/v1/completions", 405), ("PUT", "/health", 405)]:
            r = c.request(method, route)
            assert r.status_code == status and _error_shape(status, r.text)["type"]
        r = c.post("/v1/completions", content=b'{"prompt": "' + b"x" * (9 * 2**20) + b'"}')
        assert r.status_code == 413 and _error_shape(413, r.text)["code"] == "body_too_large"
        r = c.post("/v1/chat/completions", json={**GOOD_CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]})
        assert r.status_code == 400 and _error_shape(400, r.text)["param"] == "messages"
        r = c.post("/v1/chat/completions", json={**GOOD_CHAT, "max_tokens": 1000})
        assert r.status_code == 400 and _error_shape(400, r.text)["param"] == "max_tokens"


def _good_requests() -> list[tuple[str, dict]]:
    chats = [("/v1/chat/completions", {"model": "tiny", "messages": m, "tools": t, "temperature": 0, "max_tokens": 120,
                                        "chat_template_kwargs": k}) for m, t, k, _ in SCRIPTS]
    sampled = [("/v1/completions", {"model": "tiny", "prompt": f"request {i}", "max_tokens": 10, "n": 2, "seed": i,
                                    "temperature": 1.0}) for i in range(3)]
    return chats + sampled


def _answers(route: str, body: dict) -> list:
    with httpx.Client(timeout=120) as c:
        r = c.post(SERVER[0] + route, json=body)
    assert r.status_code == 200, r.text
    out = _strict(r.text)["choices"]
    for ch in out:  # tool-call ids are random per response
        for call in (ch.get("message") or {}).get("tool_calls") or []:
            call.pop("id")
    return [(ch.get("text"), ch.get("message"), ch["finish_reason"]) for ch in out]


SERVER: list[str] = []
HOSTILE = [  # each used to fail the engine step, a concurrent good request, or the connection
    ("/v1/completions", {"prompt": "x", "stop_token_ids": [10**9], "min_tokens": 5}),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": ["a"], "min_tokens": 5}),
    ("/v1/completions", {"prompt": [10**9, 3], "max_tokens": 5}),
    ("/v1/completions", {"prompt": "x", "seed": 2**64, "max_tokens": 5}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "weather"}], "max_tokens": 30, "temperature": 0,
                              "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                                  "type": "object", "properties": []}}}]}),
    ("/v1/completions", {"prompt": "long", "max_tokens": 300, "n": 4, "ignore_eos": True, "temperature": 1.5,
                         "seed": 1}),
    ("/v1/completions", {"prompt": "x", "temperature": 1e-30, "max_tokens": 20, "logprobs": 20, "top_k": 2**31 - 1}),
]


def test_hostile_requests_do_not_change_good_answers(server):
    """The good requests' answers, alone and run concurrently with hostile ones, are equal (greedy scripted chats
    and seeded samples: the tokens do not depend on what else is in the batch)."""
    SERVER[:] = [server]
    alone = [_answers(route, body) for route, body in _good_requests()]

    def hostile(job):
        route, body = job
        r = httpx.post(server + route, content=json.dumps(body).encode(), timeout=120)  # \ud800 stays escaped
        if r.status_code != 200:
            _error_shape(r.status_code, r.text)
        return r.status_code

    with ThreadPoolExecutor(12) as pool:
        bad = [pool.submit(hostile, job) for job in HOSTILE * 2]
        good = [pool.submit(_answers, route, body) for route, body in _good_requests()]
        assert [f.result() for f in good] == alone
        codes = [f.result() for f in bad]
    assert codes.count(200) == 4 and all(c == 400 for c in codes if c != 200)
    assert _answers("/v1/chat/completions", GOOD_CHAT)[0][1]["content"] == GOOD_ANSWER


def _wait_idle(server, deadline_s: float = 120) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        m = metrics(server)
        if m["num_sequences_running"] == 0 and m["num_requests_waiting"] == 0:
            return m
        time.sleep(0.05)
    pytest.fail(f"engine still busy after the clients left: {metrics(server)}")


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_its_request(server, stream):
    """A client that goes away (stream closed / read timeout) frees its sequences: the engine goes idle long before
    the 900 tokens x 3 samples it asked for are generated."""
    _wait_idle(server)
    before = metrics(server)
    body = {"model": "tiny", "prompt": "go on", "max_tokens": 900, "n": 3, "ignore_eos": True, "stream": stream}
    if stream:
        with httpx.stream("POST", server + "/v1/completions", json=body, timeout=60) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 4:
                    break                                     # leave after a few chunks: the connection closes
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
    after = _wait_idle(server)
    assert after["requests_aborted_total"] == before["requests_aborted_total"] + 1
    assert after["generation_tokens_total"] - before["generation_tokens_total"] < 3 * 900
    assert after["num_free_slots"] == 8


def _stream_choices(route: str, body: dict, chat: bool) -> tuple[dict[int, dict], dict | None]:
    """Assemble a stream per choice: text/content, reasoning, tool calls, logprob tokens, finish_reason."""
    with httpx.Client(timeout=120) as c:
        r = c.post(SERVER[0] + route, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    out: dict[int, dict] = {}
    usage = None
    for ev in _sse(r.text):
        assert "error" not in ev, ev
        usage = ev.get("usage") or usage
        for ch in ev["choices"]:
            o = out.setdefault(ch["index"], {"text": "", "reasoning": "", "calls": [], "lp": [], "finish": None})
            assert o["finish"] is None, "a chunk after the choice's finish_reason"
            d = ch["delta"] if chat else ch
            o["text"] += d.get("content") or d.get("text") or ""
            o["reasoning"] += d.get("reasoning_content") or ""
            o["calls"] += d.get("tool_calls") or []
            if ch.get("logprobs"):
                o["lp"] += ch["logprobs"]["content"] if chat else ch["logprobs"]["token_logprobs"]
            o["finish"] = ch["finish_reason"]
    return out, usage


def test_streams_are_complete_and_equal_under_load(server):
    """16 concurrent streams, n = 3: every choice ends with its finish_reason, and equals the non-streamed
    answer for the same seed (text, reasoning, tool calls, logprobs, usage)."""
    SERVER[:] = [server]
    jobs = [("/v1/completions", {"model": "tiny", "prompt": f"stream {i}", "max_tokens": 12, "n": 3, "seed": i,
                                 "temperature": 1.0, "logprobs": 1}, False) for i in range(8)]
    jobs += [("/v1/chat/completions", {"model": "tiny", "messages": m, "tools": t, "chat_template_kwargs": k, "n": 3,
                                       "temperature": 0.3, "seed": 5, "max_tokens": 120, "logprobs": True,
                                       "top_logprobs": 2}, True) for m, t, k, _ in SCRIPTS] * 2
    with ThreadPoolExecutor(16) as pool:
        streamed = list(pool.map(lambda j: _stream_choices(*j), jobs))
    for (route, body, chat), (choices, usage) in zip(jobs, streamed):
        r = httpx.post(server + route, json=body, timeout=120)
        full = _strict(r.text)
        assert sorted(choices) == [0, 1, 2] and usage["completion_tokens"] == full["usage"]["completion_tokens"]
        for ch in full["choices"]:
            got = choices[ch["index"]]
            assert got["finish"] == ch["finish_reason"]
            if not chat:
                assert got["text"] == ch["text"]
                # the same tokens' logprobs from batches of another make-up: fp32 sums reordered, ~1e-6 relative
                assert got["lp"] == pytest.approx(ch["logprobs"]["token_logprobs"], rel=1e-4, abs=1e-4)
                continue
            msg = ch["message"]
            assert got["text"] == (msg["content"] or "") and got["reasoning"] == (msg["reasoning_content"] or "")
            calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                     for c in msg.get("tool_calls") or []]
            assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got["calls"]] == calls
            assert [e["token"] for e in got["lp"]] == [e["token"] for e in ch["logprobs"]["content"]]
    tool_job = [s for (_, b, chat), s in zip(jobs, streamed) if chat and b.get("tools")][0][0]
    assert all(tool_job[i]["finish"] == "tool_calls" and tool_job[i]["calls"] for i in range(3))


def test_health_answers_while_big_prompts_are_prepared(server):
    """Bodies above 256 KiB are parsed, rendered and tokenised in worker processes (those C calls hold the GIL for
    their whole length: in a thread they stalled /health 0.1-9 s). /health keeps answering while big prompts are
    prepared; /metrics counts where each body was prepared. Only answers and counts are asserted: on a shared
    2-core machine a latency bound would measure the machine's load; `bench/bench_serve_load.py --health` measures
    /health latency (threads vs processes, bench/RESULTS.md)."""
    huge = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "y" * 5_000_000}]}).encode()
    tokenised = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "é a" * 21_000}]}).encode()
    tokenised = tokenised[:-1] + b" " * 200_000 + b"}"     # past 256 KiB, its text short enough to be tokenised
    before = metrics(server)
    clients = [httpx.Client(base_url=server, timeout=300) for _ in range(5)]
    with ThreadPoolExecutor(4) as pool:
        bigs = [pool.submit(c.post, "/v1/chat/completions", content=body)
                for c, body in zip(clients, [huge, tokenised, tokenised, huge])]
        health = 0
        while not all(f.done() for f in bigs):
            assert clients[4].get("/health").json() == {"status": "ok"}
            health += 1
        answers = [f.result() for f in bigs]
    for c in clients:
        c.close()
    assert health >= 1 and [r.status_code for r in answers] == [400] * 4
    assert "characters cannot fit" in answers[0].json()["error"]["message"]         # refused before tokenising
    assert "tokens leave no room" in answers[1].json()["error"]["message"]             # tokenised, then refused
    after = metrics(server)
    assert after["requests_prepared_in_process_total"] - before["requests_prepared_in_process_total"] == 4


def test_a_large_body_prepared_in_a_worker_process_gets_the_same_answer(server):
    """The same request, its body padded with JSON whitespace past 256 KiB, goes through a worker process (parse,
    validate, render, tokenise there, ids back): same answer, same field-named errors as in a thread."""
    body = {"model": "tiny", "messages": SCRIPTS[0][0], "temperature": 0, "max_tokens": 100, "logprobs": True}
    small = json.dumps(body).encode()
    padded = small[:-1] + b" " * 300_000 + b"}"
    bad = {**body, "messages": [{"role": "user", "content": "x"}, {"role": 7, "content": "x"}]}
    before = metrics(server)
    with httpx.Client(base_url=server, timeout=300) as c:
        answers = [c.post("/v1/chat/completions", content=raw).json() for raw in (small, padded)]
        errors = [c.post("/v1/chat/completions", content=raw).json() for raw in (
            json.dumps(bad).encode(), json.dumps(bad).encode()[:-1] + b" " * 300_000 + b"}")]
    after = metrics(server)
    assert after["requests_prepared_in_process_total"] - before["requests_prepared_in_process_total"] == 2
    assert after["requests_prepared_in_thread_total"] - before["requests_prepared_in_thread_total"] >= 2
    assert answers[0]["choices"] == answers[1]["choices"] and answers[0]["usage"] == answers[1]["usage"]
    assert answers[0]["choices"][0]["message"]["content"] == "\nHello there!"
    assert errors[0] == errors[1] and errors[0]["error"]["param"] == "messages[1].role"


def test_preparation_workers_leave_with_a_killed_server(tmp_path):
    """A server SIGKILLed (no shutdown) must not leave its body-preparation worker processes behind."""
    from net import start_server, stop_server  # noqa: I001
    path = build_scripted(tmp_path / "tiny")
    proc, base = start_server(path, "--served-model-name", "tiny", "--max-model-len", "1024")
    try:
        body = {"model": "tiny", "messages": SCRIPTS[0][0], "max_tokens": 1}
        raw = json.dumps(body).encode()[:-1] + b" " * 300_000 + b"}"
        httpx.post(base + "/v1/chat/completions", content=raw, timeout=300).raise_for_status()
        workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == proc.pid
                   and b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert workers, "the padded body went through a worker process"
    finally:
        proc.kill()
        stop_server(proc)
    deadline = time.monotonic() + 60          # each worker checks its parent once a second
    while any(Path(f"/proc/{w}").exists() and _parent(w) != 0 for w in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and _parent(w) != 0]


def _parent(pid: int) -> int:
    """The parent pid of a live process; 0 once it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return 0 if fields[0] == "Z" else int(fields[1])
