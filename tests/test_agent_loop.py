"""A full OpenAI agent loop against a real `nemoh serve` on 127.0.0.1, driven by the real `openai` client, with a
Nemotron-shaped chat template (`arguments|items`) in the checkpoint: the assistant's tool call comes back as the
OpenAI API sends it (arguments as a JSON string), the tool result follows, and the model answers, streamed and not."""
import json

import openai
import pytest
from net import serving
from templates import NANO_LIKE

from nemoh.cli.model_cmds import init_tiny
from nemoh.tokenizer import Tokenizer, normalize_messages

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "days": {"type": "integer"}}}}}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = init_tiny(tmp_path_factory.mktemp("agent") / "tiny")
    (path / "chat_template.jinja").write_text(NANO_LIKE)
    with serving(path, "--served-model-name", "tiny", "--max-model-len", "2048") as (_, base):
        yield path, openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)


def test_agent_loop_with_string_arguments_streamed_and_not(served):
    path, client = served
    messages = [{"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "Weather in Paris for 2 days?"}]
    first = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=4,
                                           temperature=0)
    assert first.choices[0].message is not None
    # the turn as an agent framework sends it back: the SDK's tool call, arguments a JSON string
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "days": 2})}}]})
    messages.append({"role": "tool", "tool_call_id": "call_1", "content": "sunny, 22C"})
    messages.append({"role": "user",
                     "content": [{"type": "text", "text": "Thanks."}, {"type": "text", "text": "Summary?"}]})
    final = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=6,
                                           temperature=0, seed=1)
    # the server rendered exactly the template's own shapes: its prompt is the normalised rendering
    tok = Tokenizer.from_pretrained(path)
    prompt = tok.apply_chat_template(normalize_messages(messages), tools=TOOLS, add_generation_prompt=True)
    assert "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>" in prompt
    assert "<tool_response>\nsunny, 22C\n</tool_response>" in prompt and "Thanks.\nSummary?" in prompt
    assert final.usage.prompt_tokens == len(tok.encode(prompt))
    assert final.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=6,
                                            temperature=0, seed=1, stream=True)
    text, reasons = "", []
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert reasons == [final.choices[0].finish_reason]
    assert text == (final.choices[0].message.content or "")


def test_arguments_that_are_not_json_are_a_400_naming_the_field(served):
    _, client = served
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=2)
    assert "messages[1].tool_calls[0].function.arguments" in str(e.value)
