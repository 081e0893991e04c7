"""Template conformance: templates shaped like published ones (tests/templates.py) render exactly as transformers'
`apply_chat_template` does, and every assistant turn is trained as the model sees and writes it at inference."""

import copy
import json

import pytest
from templates import (
    HERMES_LIKE,
    NANO_LIKE,
    QWEN3_LIKE,
    hermes_output,
    nano_output,
    qwen3_output,
)

from nemoh.cli.model_cmds import init_tiny
from nemoh.data import chat_examples, load_chat_examples
from nemoh.data.readers import ErrorLog, Row
from nemoh.tokenizer import Tokenizer, normalize_messages

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
}  # OpenAI: a JSON string
MULTI_TURN_REASONING = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "reasoning_content": "two and two", "content": "4"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "reasoning_content": "three and three", "content": "6"},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "You're welcome."},
]
AGENT_TRACE = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "reasoning_content": "need the tool", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
    {"role": "assistant", "reasoning_content": "got it", "content": "Sunny, 22C."},
    {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "tomorrow?"}]},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    {"role": "assistant", "reasoning_content": "rain", "content": "Rain."},
]
CASES = {  # template -> (the model's output for an assistant message, the rendering's own kwargs)
    "nano": (NANO_LIKE, nano_output),
    "nano-keep-history": (NANO_LIKE, nano_output),
    "hermes": (HERMES_LIKE, lambda m: hermes_output(m)),
    "qwen3": (QWEN3_LIKE, lambda m: qwen3_output(m)),
}
KWARGS = {"nano-keep-history": {"truncate_history_thinking": False}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("tpl") / "tiny")


@pytest.fixture(scope="module")
def base(ckpt):
    return Tokenizer.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def hf(ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt)


def with_template(base, template):
    return Tokenizer(base._tok, base.config, template)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("conv", ["reasoning", "agent"])
def test_rendering_equals_transformers(base, hf, case, conv):
    template, _ = CASES[case]
    tok = with_template(base, template)
    msgs = MULTI_TURN_REASONING if conv == "reasoning" else AGENT_TRACE
    tools = TOOLS if conv == "agent" else None
    # transformers renders the template's own shapes: arguments as mappings, content as text
    plain = normalize_messages(msgs)
    for k in range(1, len(msgs) + 1):
        for gen in (False, True):
            for kw in ({}, {"enable_thinking": False}, KWARGS.get(case, {})):
                ours = tok.apply_chat_template(msgs[:k], tools=tools, add_generation_prompt=gen, **kw)
                ref = hf.apply_chat_template(
                    plain[:k], tools=tools, chat_template=template, tokenize=False, add_generation_prompt=gen, **kw
                )
                assert ours == ref, (k, gen, kw)


def _trained_turns(tok, examples):
    """[(context ids, decoded trained text)] for every contiguous trained span of every example."""
    out = []
    for ids, mask in examples:
        i = 0
        while i < len(ids):
            if mask[i]:
                j = i
                while j < len(ids) and mask[j]:
                    j += 1
                out.append((ids[:i], tok.decode(ids[i:j], skip_special_tokens=False)))
                i = j
            else:
                i += 1
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("conv", ["reasoning", "agent"])
def test_every_assistant_turn_is_trained_as_at_inference(base, case, conv):
    """Decode the trained tokens: each assistant turn once, preceded by exactly the prompt the model gets at
    inference (the generation prompt after the history the template renders then)."""
    template, output = CASES[case]
    tok = with_template(base, template)
    msgs = MULTI_TURN_REASONING if conv == "reasoning" else AGENT_TRACE
    tools = TOOLS if conv == "agent" else None
    kw = KWARGS.get(case, {})
    trained = _trained_turns(tok, chat_examples(tok, copy.deepcopy(msgs), tools, **kw))
    want = []
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        thinking = (
            {}
            if m.get("reasoning_content") or case not in ("nano", "nano-keep-history")
            else {"enable_thinking": False}
        )
        prompt = tok.encode(
            tok.apply_chat_template(msgs[:k], tools=tools, add_generation_prompt=True, **kw, **thinking)
        )
        want.append((prompt, output(m)))
    assert sorted(trained, key=lambda t: len(t[0])) == want


def test_history_truncation_needs_one_example_per_user_turn_and_none_without(base):
    tok = with_template(base, NANO_LIKE)
    assert len(chat_examples(tok, MULTI_TURN_REASONING)) == 3  # default truncate_history_thinking=True
    assert len(chat_examples(tok, MULTI_TURN_REASONING, truncate_history_thinking=False)) == 1
    # tool calls after the last user turn keep their reasoning: an agent step is one example
    assert len(chat_examples(tok, AGENT_TRACE[:5], TOOLS)) == 1


def test_unmaskable_rows_are_reported_and_the_share_stops_the_run(base, capsys):
    # a template that renders each message differently depending on what follows cannot be masked
    tok = with_template(
        base,
        "{% for m in messages %}{{ m.role }}{{ messages|length }}:{{ m.content }}|{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}",
    )
    good = with_template(base, HERMES_LIKE)
    rows = [Row({"messages": MULTI_TURN_REASONING[1:3]}, f"d.jsonl:line {i + 1}") for i in range(3)]
    errors = ErrorLog("warn")
    with pytest.raises(ValueError, match=r"d.jsonl: skipped 3 of 3 rows .*max_skip_share=0.1"):
        load_chat_examples(rows, tok, errors, source="d.jsonl")
    err = capsys.readouterr().err
    assert "skipped d.jsonl:line 1: could not render: chat template: cannot locate assistant turn messages[1]" in err
    errors = ErrorLog("skip")
    assert load_chat_examples(rows, tok, errors, source="d.jsonl") == []
    assert "d.jsonl: skipped 3 of 3 rows (3 could not render)" in capsys.readouterr().err
    # one bad row in eleven stays under the 10% default
    mixed = [Row({"messages": MULTI_TURN_REASONING[1:3]}, f"m:line {i}") for i in range(10)]
    mixed.append(Row({"messages": [{"role": "user", "content": "no answer"}]}, "m:line 10"))
    assert len(load_chat_examples(mixed, good, ErrorLog("warn"), source="m")) == 10


def test_string_arguments_that_are_not_json_name_the_field(base):
    tok = with_template(base, NANO_LIKE)
    bad = copy.deepcopy(AGENT_TRACE[:3])
    bad[1]["tool_calls"][0]["function"]["arguments"] = '{"city": '
    with pytest.raises(ValueError, match=r"messages\[1\]\.tool_calls\[0\]\.function\.arguments: not valid JSON"):
        tok.apply_chat_template(bad, tools=TOOLS)
    bad[1]["tool_calls"][0]["function"]["arguments"] = '{"x": NaN}'
    with pytest.raises(ValueError, match=r"arguments: not valid JSON"):
        tok.apply_chat_template(bad, tools=TOOLS)
    bad[1]["tool_calls"][0]["function"]["arguments"] = "[1, 2]"
    with pytest.raises(ValueError, match=r"arguments: must be a JSON object"):
        tok.apply_chat_template(bad, tools=TOOLS)
    bad[1]["tool_calls"][0]["function"]["arguments"] = json.dumps({"city": "Paris"})
    assert "<parameter=city>\nParis\n</parameter>" in tok.apply_chat_template(bad, tools=TOOLS)


def test_normalize_messages_shapes():
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, "b"]},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "r"}]},
    ]
    out = normalize_messages(msgs)
    assert out[0]["content"] == "a\nb" and out[2] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "r",
        "name": "get_weather",
    }
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris", "days": 2}
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == CALL["function"]["arguments"]  # input untouched
    with pytest.raises(ValueError, match=r"messages\[0\]\.content\[0\]: only text parts"):
        normalize_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(ValueError, match=r"messages\[0\]: must be an object"):
        normalize_messages(["hi"])


def test_sft_data_path_trains_every_turn_of_multi_turn_reasoning(ckpt, tmp_path):
    """The SFT loader with the Nemotron-shaped template in the checkpoint: no row skipped, and every assistant turn
    (3 of them, reasoning in the earlier ones) is among the trained tokens of the packed rows."""
    from nemoh.train.config import load_config
    from nemoh.train.sft import load_packed

    (ckpt / "chat_template.jinja").write_text(NANO_LIKE)
    try:
        tok = Tokenizer.from_pretrained(ckpt)
        data = tmp_path / "multi.jsonl"
        data.write_text("\n".join(json.dumps({"messages": c}) for c in (MULTI_TURN_REASONING, AGENT_TRACE)) + "\n")
        cfg = load_config(None, ["--data.train", str(data), "--data.seq_len", "2048"])
        errors = ErrorLog(cfg.data.on_error)
        rows = load_packed(str(data), tok, cfg, errors)
        assert errors.skipped == []
        texts = [
            tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m], skip_special_tokens=False)
            for row in rows
            for ex in row
        ]
        for conv in (MULTI_TURN_REASONING, AGENT_TRACE):
            for m in conv:
                if m["role"] == "assistant":
                    assert sum(nano_output(m) in t for t in texts) == 1, m
        # with the history kept (a template argument from the config), one example per row
        cfg = load_config(
            None,
            [
                "--data.train",
                str(data),
                "--data.seq_len",
                "2048",
                "--data.chat_template_kwargs",
                '{"truncate_history_thinking": false}',
            ],
        )
        assert sum(len(r) for r in load_packed(str(data), tok, cfg, ErrorLog())) == 2
    finally:
        (ckpt / "chat_template.jinja").unlink()
