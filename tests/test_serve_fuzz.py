"""Seeded fuzz of a live `nemoh serve`: a few hundred malformed, extreme or wrong-typed requests, concurrently.

Every answer is < 500 and, when not 200, in the OpenAI error shape; no connection is reset; every 200 is strict JSON
(or an SSE stream ending in [DONE]); and a good request afterwards gets the same answer as before the fuzz.
"""
import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from net import serving

from nemoh.cli.model_cmds import init_tiny

N_REQUESTS = 240
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
COMPLETION = {"model": "tiny", "prompt": "hello", "max_tokens": 2, "temperature": 0}
FIELDS = ["model", "messages", "prompt", "n", "temperature", "top_p", "top_k", "min_p", "max_tokens",
          "max_completion_tokens", "min_tokens", "stop", "stop_token_ids", "seed", "stream", "stream_options",
          "logprobs", "top_logprobs", "tools", "tool_choice", "chat_template_kwargs", "ignore_eos",
          "skip_special_tokens", "max_thinking_tokens", "presence_penalty", "logit_bias", "echo", "best_of",
          "response_format", "user", "include_stop_str_in_output", "separate_reasoning", "unknown_field"]


def _values(rng: random.Random) -> list:
    deep = []
    for _ in range(rng.choice([10, 70, 300])):
        deep = [deep]
    return [None, True, False, 0, 1, 3, -1, 2**31, 2**64, -2**63 - 1, 10**30, 0.5, -0.0, 1e308, 2.5, float("nan"),
            float("inf"), "", "x", "5", "false", "\ud800", "\x00", "é" * 3, "x" * 5000, [], [1], [1, 10**9], ["a"],
            [""],
            [{"type": "text", "text": "hi"}], [{"type": "image_url"}], {}, {"a": 1}, {"include_usage": True},
            {"type": "function", "function": {"name": "f"}}, deep]


def _message(rng: random.Random, values: list) -> dict:
    msg = {"role": rng.choice(["user", "assistant", "system", "tool", "developer", "bot", 3, None]),
           "content": rng.choice(["hi", None, *values[:30]])}
    if rng.random() < 0.3:
        msg["tool_calls"] = rng.choice([[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                                        [{"function": {"name": 5}}], "x", [1]])
    if rng.random() < 0.2:
        del msg[rng.choice(list(msg))]
    return msg


def _tools(rng: random.Random, values: list) -> list:
    params = rng.choice([{"type": "object", "properties": {"a": {"type": "number"}}}, {"properties": [1]},
                         {"type": "array"}, {"type": "object", "properties": {"a": True}}, "x", None,
                         {"type": "object", "properties": {"a": {"type": rng.choice(values[:20])}}}])
    return [{"type": rng.choice(["function", "tool", 1]), "function": {"name": rng.choice(["f", "", "a b", 5]),
                                                                        "parameters": params}}]


def make_request(rng: random.Random) -> tuple[str, str, bytes]:
    """(method, path, body bytes) of one hostile request."""
    values = _values(rng)
    chat = rng.random() < 0.5
    body = json.loads(json.dumps(CHAT if chat else COMPLETION))
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(FIELDS)
        roll = rng.random()
        if roll < 0.15:
            body.pop(field, None)
        elif field == "messages" and roll < 0.7:
            body["messages"] = [_message(rng, values) for _ in range(rng.randint(1, 3))]
        elif field == "tools" and roll < 0.7:
            body["tools"] = _tools(rng, values)
        else:
            body[field] = rng.choice(values)
    if rng.random() < 0.3:
        body["stream"] = True
    if body.get("stream") is True and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    raw = json.dumps(body).encode()
    corrupt = rng.random()
    if corrupt < 0.05:
        raw = raw[: rng.randint(0, len(raw))]
    elif corrupt < 0.08:
        raw = raw.replace(b"hi", b"\xff\xfe")
    elif corrupt < 0.10:
        raw = b"[" * 5000 + b"]" * 5000
    elif corrupt < 0.12:
        raw = json.dumps(rng.choice(values)).encode()
    path = "/v1/chat/completions" if chat else "/v1/completions"
    method = "POST"
    if rng.random() < 0.05:
        method, path = rng.choice([("GET", path), ("POST", "/v1/nothing"), ("PATCH", "/health"), ("GET", "/v2/x")])
    return method, path, raw


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "tiny"
    init_tiny(path, seed=0)
    with serving(path, "--served-model-name", "tiny", "--max-model-len", "48", "--max-num-seqs", "8") as (proc, base):
        yield base, proc


def _strict(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in a response"))


def _check(status: int, text: str, content_type: str) -> None:
    assert status < 500, text[:500]
    if status != 200:
        err = _strict(text)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], err
        assert "Traceback" not in err["message"]
    elif content_type.startswith("text/event-stream"):
        data = [ln[6:] for ln in text.splitlines() if ln.startswith("data: ")]
        assert data and data[-1] == "[DONE]", text[-300:]
        for d in data[:-1]:
            _strict(d)
    else:
        _strict(text)


def test_fuzz_no_5xx_no_resets_and_still_right(tiny_server):
    base, proc = tiny_server
    good = httpx.post(base + "/v1/completions", json={**COMPLETION, "max_tokens": 16}, timeout=60).json()
    rng = random.Random(20261123)
    requests = [make_request(rng) for _ in range(N_REQUESTS)]
    resets: list[str] = []

    def send(job):
        method, path, raw = job
        try:
            with httpx.Client(base_url=base, timeout=120) as c:
                r = c.request(method, path, content=raw, headers={"content-type": "application/json"})
            return r.status_code, r.text, r.headers.get("content-type", "")
        except httpx.TransportError as e:   # a reset / closed connection: the server dropped a client
            resets.append(f"{type(e).__name__} on {method} {path}: {raw[:200]!r}")
            return None

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, requests))
    assert resets == []
    for (method, path, raw), answer in zip(requests, answers):
        try:
            _check(*answer)
        except AssertionError as e:
            raise AssertionError(f"{method} {path} {raw[:300]!r}: {e}") from None
    statuses = [a[0] for a in answers]
    assert statuses.count(200) > 20 and statuses.count(400) > 100   # the fuzz reached the engine and the validators
    assert proc.poll() is None
    again = httpx.post(base + "/v1/completions", json={**COMPLETION, "max_tokens": 16}, timeout=60).json()
    assert again["choices"] == good["choices"]
