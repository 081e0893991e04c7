"""A tiny checkpoint trained (here, in seconds) to answer a few chat prompts word for word, so that server tests
see real reasoning blocks and real tool calls come out of a real model."""
from __future__ import annotations

from pathlib import Path

import torch

from nemoh import NemotronHForCausalLM
from nemoh.model.tiny import init_tiny
from nemoh.tokenizer import Tokenizer

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}},
        "required": ["city"]}}}

# (messages, tools, chat_template_kwargs, response the model must give)
SCRIPTS = [
    ([{"role": "user", "content": "Say hi"}], None, {},
     "The user wants a greeting.\n</think>\nHello there!<|im_end|>"),
    ([{"role": "user", "content": "Say hi"}], None, {"enable_thinking": False},
     "Hi! Short answer.<|im_end|>"),
    ([{"role": "user", "content": "Weather in Paris?"}], [WEATHER_TOOL], {},
     "Call the tool.\n</think>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
     "<parameter=days>\n3\n</parameter>\n<parameter=metric>\nTrue\n</parameter>\n</function>\n</tool_call><|im_end|>"),
]


def build_scripted(path: Path, steps: int = 400) -> Path:
    init_tiny(path, seed=0)
    tok = Tokenizer.from_pretrained(path)
    model = NemotronHForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    rows = []
    for messages, tools, kwargs, response in SCRIPTS:
        prompt = tok.encode(tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, **kwargs))
        rows.append((prompt, tok.encode(response)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    torch.manual_seed(0)
    for step in range(steps):
        loss = 0.0
        for prompt, resp in rows:
            ids = torch.tensor([prompt + resp])
            logits = model(ids).logits[0, len(prompt) - 1: -1]
            loss = loss + torch.nn.functional.cross_entropy(logits, torch.tensor(resp))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24 and _memorised(model, rows):
            break
    assert _memorised(model, rows), f"scripted model did not memorise its answers (loss {float(loss):.3f})"
    model.eval().save_pretrained(path)
    return path


@torch.no_grad()
def _memorised(model: NemotronHForCausalLM, rows) -> bool:
    for prompt, resp in rows:
        logits = model(torch.tensor([prompt + resp])).logits[0, len(prompt) - 1: -1]
        if not torch.equal(logits.argmax(-1), torch.tensor(resp)):
            return False
    return True
