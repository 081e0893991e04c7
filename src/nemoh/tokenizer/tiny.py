"""The built-in tiny tokenizer: byte-level (every UTF-8 byte is a token), Nemotron's special tokens, a ChatML
template with `enable_thinking`. Written as tokenizer.json + tokenizer_config.json, loadable by nemoh and by
transformers' AutoTokenizer alike. Nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                  "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
NUM_RESERVED = 16  # byte tokens start here; ids 11..15 are free for later special tokens

# ChatML as the Nemotron-3 template renders it: an assistant turn opens with <think>, or with an empty
# <think></think> when enable_thinking is false; tools are listed in the system turn and tool calls use the
# qwen3_coder XML form. Unlike the reference template, non-string arguments are written as JSON (true, not True).
CHAT_TEMPLATE = (
    "{% set ns = namespace(start=0) %}"
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% set ns.start = 1 %}{% endif %}"
    "# Tools\n\nYou have access to the following functions:\n\n<tools>"
    "{% for tool in tools %}\n{{ (tool['function'] if tool['function'] is defined else tool) | tojson }}{% endfor %}"
    "\n</tools>\n\nTo call a function, reply with:\n<tool_call>\n<function=example_function_name>\n"
    "<parameter=example_parameter_1>\nvalue_1\n</parameter>\n</function>\n</tool_call><|im_end|>\n"
    "{% endif %}"
    "{% for message in messages[ns.start:] %}"
    "{% if message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}"
    "{% if message.get('reasoning_content') %}<think>\n{{ message['reasoning_content'] }}\n</think>\n"
    "{% elif enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}"
    "{% endif %}"
    "{{ message['content'] or '' }}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{% set f = call['function'] if call['function'] is defined else call %}"
    "{% set args = f['arguments'] | fromjson if f['arguments'] is string else f['arguments'] %}"
    "<tool_call>\n<function={{ f['name'] }}>\n"
    "{% for k, v in args.items() %}<parameter={{ k }}>\n{{ v if v is string else v | tojson }}\n</parameter>\n"
    "{% endfor %}"
    "</function>\n</tool_call>"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% else %}<think>\n{% endif %}"
    "{% endif %}"
)


def build_tiny_tokenizer() -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"<reserved_{i}>": i for i in range(len(SPECIAL_TOKENS), NUM_RESERVED)})
    for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_order)):
        vocab[ch] = NUM_RESERVED + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def _byte_order(ch: str) -> int:
    """Order the byte-level alphabet by the byte each character stands for (GPT-2's byte->unicode map)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip((chr(c) for c in cs), bs))[ch]


def save_tiny_tokenizer(out_dir: str | Path) -> Tokenizer:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<unk>", "unk_token": "<unk>",
        "add_bos_token": False, "model_max_length": 4096, "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok


def tiny_vocab_size() -> int:
    return NUM_RESERVED + 256
