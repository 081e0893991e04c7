"""Tool-call parsing on hand-written model outputs, and the vLLM/SGLang command lines."""
import json

import pytest

from nemoh.model.tiny import init_tiny
from nemoh.serve import build_command, parse_tool_calls

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "s": {"type": "string"}, "i": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean"},
    "o": {"type": "object"}, "a": {"type": "array"}}}}}]


def test_parse_typed_arguments():
    text = ("Let me check.\n<tool_call>\n<function=f>\n<parameter=s>\n42\n</parameter>\n"
            "<parameter=i>\n7\n</parameter>\n"
            "<parameter=x>\n2.5\n</parameter>\n<parameter=b>\nFalse\n</parameter>\n"
            "<parameter=o>\n{'k': True, 'n': None}\n</parameter>\n<parameter=a>\n[1, 2]\n</parameter>\n"
            "</function>\n</tool_call>")
    content, calls = parse_tool_calls(text, TOOLS)
    assert content == "Let me check."
    args = json.loads(calls[0]["function"]["arguments"])
    assert args == {"s": "42", "i": 7, "x": 2.5, "b": False, "o": {"k": True, "n": None}, "a": [1, 2]}
    assert "False" not in calls[0]["function"]["arguments"] and calls[0]["type"] == "function"


def test_parse_without_schema_and_several_calls():
    text = ("<tool_call>\n<function=g>\n<parameter=flag>\nTrue\n</parameter>\n<parameter=n>\n3\n</parameter>\n"
            "<parameter=name>\nmulti\nline\n</parameter>\n</function>\n</tool_call>\n"
            "<tool_call>\n<function=h>\n</function>\n</tool_call>")
    content, calls = parse_tool_calls(text)
    assert content == "" and [c["function"]["name"] for c in calls] == ["g", "h"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"flag": True, "n": 3, "name": "multi\nline"}
    assert json.loads(calls[1]["function"]["arguments"]) == {}
    assert parse_tool_calls("no tools here") == ("no tools here", [])


def test_truncated_call_still_parses():
    content, calls = parse_tool_calls("<tool_call>\n<function=f>\n<parameter=i>\n5", TOOLS)
    assert json.loads(calls[0]["function"]["arguments"]) == {"i": 5}


def test_launcher_commands(tmp_path):
    init_tiny(tmp_path / "m")
    cmd, env = build_command("vllm", tmp_path / "m", port=9000, name="nem", tensor_parallel_size=2)
    line = " ".join(cmd)
    for flag in ("--trust-remote-code", "--mamba-ssm-cache-dtype float32", "--tool-call-parser qwen3_coder",
                 "--reasoning-parser nano_v3", "--tensor-parallel-size 2", "--served-model-name nem", "--port 9000",
                 "--enable-expert-parallel"):
        assert flag in line
    assert "--kv-cache-dtype" not in line and env == {}
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    cmd, env = build_command("vllm", tmp_path / "m")
    assert "--kv-cache-dtype fp8" in " ".join(cmd) and env["VLLM_USE_FLASHINFER_MOE_FP8"] == "1"
    cmd, _ = build_command("sglang", tmp_path / "m", tensor_parallel_size=2)
    line = " ".join(cmd)
    assert "sglang.launch_server" in line and "--tp-size 2" in line and "--mamba-ssm-dtype float32" in line
    assert "--kv-cache-dtype fp8_e4m3" in line and "--reasoning-parser nemotron_3" in line
    assert "--tool-call-parser qwen3_coder" in line and "--enable-return-routed-experts" not in line
    # a rollout server for nemoh rl: routed experts per token (R3); vLLM's weight endpoints need its dev mode
    cmd, _ = build_command("sglang", tmp_path / "m", rl=True)
    assert "--enable-return-routed-experts" in cmd
    cmd, env = build_command("vllm", tmp_path / "m", rl=True)
    assert "--enable-return-routed-experts" in cmd and env["VLLM_SERVER_DEV_MODE"] == "1"
    with pytest.raises(ValueError, match="tensor-parallel-size"):
        build_command("vllm", tmp_path / "m", tensor_parallel_size=3)
    with pytest.raises(ValueError, match="--engine"):
        build_command("tgi", tmp_path / "m")


# ---- hostile input, unit level: tool arguments, body parsing, request models, engine isolation and aborts ----------
from nemoh import LLM, SamplingParams  # noqa: E402
from nemoh.serve.body import parse_json  # noqa: E402
from nemoh.serve.errors import APIError, from_validation_errors  # noqa: E402
from nemoh.serve.protocol import ChatCompletionRequest, CompletionRequest  # noqa: E402


def _call(value: str, schema=None, tools=None) -> dict:
    props = {"v": schema} if schema is not None else {}
    tools = tools if tools is not None else [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": props}}}]
    _, calls = parse_tool_calls(f"<tool_call>\n<function=f>\n<parameter=v>\n{value}\n</parameter>\n</function>\n"
                                "</tool_call>", tools)
    return json.loads(calls[0]["function"]["arguments"], parse_constant=lambda c: pytest.fail(f"{c} in arguments"))


@pytest.mark.parametrize("value", ["NaN", "nan", "Infinity", "-Infinity", "1e999", "[1, NaN]", "{'a': 1e999}"])
@pytest.mark.parametrize("schema", [None, {"type": "number"}, {"type": "array"}, {"type": "object"}])
def test_tool_arguments_are_strict_json(value, schema):
    """Non-finite numbers never reach the arguments: the model's text is kept as a string instead."""
    assert _call(value, schema) == {"v": value}


@pytest.mark.parametrize("tools", [[{"type": "function", "function": {"name": "f", "parameters": {"properties": [1]}}}],
                                   [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
                                   [{"type": "function", "function": {"name": "f", "parameters": {
                                       "type": "object", "properties": {"v": True}}}}],
                                   [{"type": "function", "function": {"name": "f", "parameters": {
                                       "type": "object", "properties": {"v": {"type": 5}}}}}],
                                   ["not a tool", 3, None]])
def test_tool_parser_survives_malformed_schemas(tools):
    assert _call("7", tools=tools) == {"v": 7}
    assert _call("[" * 5000 + "]" * 5000, tools=tools)["v"].startswith("[[[")   # too deep to read: kept as text


@pytest.mark.parametrize("raw,param", [
    (b"[" * 3000 + b"]" * 3000, "body"), (b'{"a": NaN}', "body"), (b'{"a": Infinity}', "body"),
    (b'{"a": "\\ud800"}', "a"), (b'{"a": {"\\udfff": 1}}', "a"), (b"\xff\xfe{}", "body"),
    (b'{"a": 1' + b"0" * 5000 + b"}", "body"),
    (b'{"x": ' + b'{"y": ' * 70 + b"1" + b"}" * 71, "x.y.y.y"),
])
def test_parse_json_rejects_with_the_place(raw, param):
    with pytest.raises(APIError) as e:
        parse_json(raw, max_depth=64)
    assert e.value.status == 400 and e.value.param.startswith(param)


def _bad(model, body: dict) -> str:
    from pydantic import ValidationError
    with pytest.raises(ValidationError) as e:
        model.model_validate(body)
    return from_validation_errors(e.value.errors(include_url=False)).param


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": 3, "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": None, "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": {"a": 1}}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [1, 2]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]},
     "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant"}]}, "messages[0].tool_calls"),
    ({"messages": []}, "messages"), ({"messages": "hi"}, "messages"),
    ({"messages": USER, "stream": "false"}, "stream"), ({"messages": USER, "n": True}, "n"),
    ({"messages": USER, "n": 0}, "n"), ({"messages": USER, "temperature": -1}, "temperature"),
    ({"messages": USER, "temperature": "hot"}, "temperature"), ({"messages": USER, "top_p": 0}, "top_p"),
    ({"messages": USER, "seed": 2**64}, "seed"), ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "max_tokens": 5.0}, "max_tokens"), ({"messages": USER, "stop": [""]}, "stop"),
    ({"messages": USER, "stop": ["a"] * 33}, "stop"),
    ({"messages": USER, "stop_token_ids": ["a"]}, "stop_token_ids[0]"),
    ({"messages": USER, "stop_token_ids": [-1]}, "stop_token_ids[0]"),
    ({"messages": USER, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": USER, "presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": USER, "logit_bias": {"1": 2}}, "logit_bias"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "strin"}}}}}]}, "tools[0].function.parameters"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"messages": USER, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"messages": USER, "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format.type"),
])
def test_chat_request_violations_name_the_field(body, param):
    assert _bad(ChatCompletionRequest, body) == param


@pytest.mark.parametrize("body,param", [
    ({"prompt": ""}, "prompt"), ({"prompt": 5}, "prompt"), ({"prompt": ["a", ""]}, "prompt"),
    ({"prompt": ["a"] * 257}, "prompt"),
    ({"prompt": [1, -2]}, "prompt"), ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"), ({"prompt": "x", "best_of": 3}, "best_of"),
])
def test_completion_request_violations_name_the_field(body, param):
    assert _bad(CompletionRequest, body).startswith(param)


def test_openai_message_shapes_are_accepted():
    """What h13's message normaliser handles must pass validation untouched: content parts, tool calls, tool replies."""
    req = ChatCompletionRequest.model_validate({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": "weather?", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get", "content": "sunny"},
        {"role": "developer", "content": "x"}]})
    out = req.template_messages()
    assert out[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{\"city\": \"Paris\"}"}}]}
    assert out[0]["content"] == [{"type": "text", "text": "be brief"}] and out[3]["tool_call_id"] == "c1"
    assert req.sampling_params().max_tokens is None


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "m"
    init_tiny(path)
    return LLM(path, max_num_seqs=8, max_model_len=96)


def _drain(llm: LLM) -> None:
    while llm.scheduler.has_work():
        llm.step()


def test_admission_validation(tiny_llm):
    V = tiny_llm.model.config.vocab_size
    for ids, params, field in [([V], SamplingParams(), "prompt"), ([-1], SamplingParams(), "prompt"),
                               ([1, 2], SamplingParams(stop_token_ids=[V + 5], min_tokens=3), "stop_token_ids"),
                               ([1, 2], SamplingParams(stop_token_ids=["a"]), "stop_token_ids"),
                               ([1, 2], SamplingParams(n=9), "n"), ([1, 2], SamplingParams(seed=2**64), "seed"),
                               ([1] * 96, SamplingParams(), "prompt")]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            tiny_llm.add_request(ids, params)
    assert not tiny_llm.scheduler.has_work() and not tiny_llm.requests


def test_one_failing_sequence_leaves_the_batch_running(tiny_llm):
    """A fault injected into one running request (an out-of-vocabulary stop id while min_tokens bans it, which
    admission would have refused) fails that request alone; the others' tokens equal a run without it."""
    prompts = ["Hello", "other prompt", "third"]
    params = [SamplingParams(max_tokens=12, temperature=0.8, seed=i, n=2, ignore_eos=True) for i in range(3)]
    ref = [o.outputs for o in tiny_llm.generate(prompts, params)]
    rids = [tiny_llm.add_request(p, sp) for p, sp in zip(prompts, params)]
    bad = tiny_llm.add_request("hostile", SamplingParams(max_tokens=12, min_tokens=6, n=2, temperature=0.8, seed=9))
    tiny_llm.step()
    tiny_llm.requests[bad][1][0].params.stop_token_ids.append(10**9)  # the fault: IndexError in the sampler
    _drain(tiny_llm)
    assert "IndexError" in tiny_llm.errors.pop(bad)
    assert [s.finish_reason for s in tiny_llm.requests.pop(bad)[1]] == ["error", "error"]
    for rid, want in zip(rids, ref):
        got = tiny_llm.output(rid).outputs
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        tiny_llm.requests.pop(rid)
    assert len(tiny_llm.scheduler.free_slots) == 8


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_a_model_forward_that_raises_fails_only_its_request(tiny_llm, phase):
    """A fault inside the batched model forward (raised by the last layer, after the earlier layers have advanced
    their Mamba states) whenever the batch carries one request's token: that request fails, the others' tokens
    equal a run without it (their slots are rebuilt from their own tokens before each runs alone)."""
    prompts = ["Hello", "other prompt", "third"]
    params = [SamplingParams(max_tokens=12, temperature=0.8, seed=i, n=2, ignore_eos=True) for i in range(3)]
    ref = [o.outputs for o in tiny_llm.generate(prompts, params)]
    good_ids = {t for p in prompts for t in tiny_llm.tokenizer.encode(p)}
    inputs = {t for outs in ref for c in outs for t in c.token_ids[:-1]}    # what the good rows feed to decode
    bad_params = SamplingParams(max_tokens=12, temperature=0.8, seed=9, ignore_eos=True)
    if phase == "prefill":    # a token only the bad prompt has, seen in a prompt chunk (T > 1)
        bad_prompt = [t for t in range(5, 300) if t not in good_ids][:4]
        trigger, when = bad_prompt[1], (lambda T: T > 1)
    else:                     # a token only the bad request generates, fed back as a decode input (T == 1)
        bad_prompt = [7, 8, 9]
        generated = tiny_llm.generate(bad_prompt, bad_params)[0].outputs[0].token_ids[:-1]
        trigger, when = next(t for t in generated if t not in inputs), (lambda T: T == 1)
    seen: list = []
    layers = tiny_llm.model.backbone.layers
    hooks = [tiny_llm.model.backbone.embeddings.register_forward_pre_hook(lambda m, a: seen.__setitem__(
                 slice(None), [a[0]])),
             layers[len(layers) - 1].register_forward_pre_hook(lambda m, a: _raise_if(seen[0], trigger, when))]
    try:
        rids = [tiny_llm.add_request(p, sp) for p, sp in zip(prompts, params)]
        bad = tiny_llm.add_request(bad_prompt, bad_params)
        _drain(tiny_llm)
    finally:
        for h in hooks:
            h.remove()
    assert "injected fault" in tiny_llm.errors.pop(bad)
    assert [s.finish_reason for s in tiny_llm.requests.pop(bad)[1]] == ["error"]
    for rid, want in zip(rids, ref):
        got = tiny_llm.output(rid).outputs
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        # fp32 logprobs of a rebuilt slot differ from the incremental ones by reduction order (~1e-6 measured);
        # a slot left with the failed forward's half-applied Mamba update is off by ~0.15 on this model
        assert max(abs(a - b) for c, w in zip(got, want) for a, b in zip(c.logprobs, w.logprobs)) < 1e-4
        tiny_llm.requests.pop(rid)
    assert len(tiny_llm.scheduler.free_slots) == 8


def _raise_if(ids, token: int, when) -> None:
    if when(ids.shape[1]) and bool((ids == token).any()):
        raise RuntimeError("injected fault")


def test_abort_request_frees_slots_at_next_step(tiny_llm):
    rid = tiny_llm.add_request("Hello", SamplingParams(max_tokens=80, n=3, ignore_eos=True))
    tiny_llm.step()
    tiny_llm.step()
    assert len(tiny_llm.scheduler.free_slots) == 5
    tiny_llm.abort_request(rid)          # thread-safe: applied when the next step starts
    tiny_llm.step()
    assert (not tiny_llm.scheduler.has_work() and len(tiny_llm.scheduler.free_slots) == 8
            and rid not in tiny_llm.requests)
