"""Chat templates shaped like published ones, written for the tests (no download): each with the output the model
writes at inference for an assistant message, derived by hand from the template's text, independently of nemoh's
masking code."""
import json

# Nemotron-3-Nano's shape: history truncation of reasoning before the last user turn (default on), tool calls
# iterated with `arguments|items` (a string fails), consecutive tool results inside one user turn, tools listed
# in the system turn (always rendered), `<think>\n` opened by the generation prompt.
NANO_LIKE = """
{%- set enable_thinking = enable_thinking if enable_thinking is defined else true %}
{%- set truncate = truncate_history_thinking if truncate_history_thinking is defined else true %}
{%- if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set msgs = messages[1:] %}
{%- else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for m in msgs %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
{{- '<|im_start|>system\\n' ~ sys }}
{%- if tools %}
{%- if sys %}{{ '\\n\\n' }}{% endif %}
{{- '# Tools\\n\\n<tools>' }}
{%- for t in tools %}{% set t = t.function if t.function is defined else t %}
{{- '\\n<function>\\n<name>' ~ t.name ~ '</name>' }}
{%- for pname, p in (t.parameters.properties or {})|items %}
{{- '\\n<parameter>\\n<name>' ~ pname ~ '</name>\\n<type>' ~ p.type ~ '</type>\\n</parameter>' }}
{%- endfor %}
{{- '\\n</function>' }}
{%- endfor %}
{{- '\\n</tools>' }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- for m in msgs %}
{%- if m.role == 'assistant' %}
{%- if m.reasoning_content %}{% set c = '<think>\\n' ~ m.reasoning_content ~ '\\n</think>\\n' ~ (m.content or '') %}
{%- else %}{% set c = '<think></think>' ~ (m.content or '') %}{% endif %}
{%- if truncate and loop.index0 < ns.last_user %}{% set c = '<think></think>' ~ c.split('</think>')[-1] %}{% endif %}
{{- '<|im_start|>assistant\\n' ~ (c | trim) }}
{%- if m.tool_calls %}{{ '\\n' }}
{%- for tc in m.tool_calls %}{% set f = tc.function if tc.function is defined else tc %}
{{- '<tool_call>\\n<function=' ~ f.name ~ '>\\n' }}
{%- for k, v in f.arguments|items %}
{{- '<parameter=' ~ k ~ '>\\n' ~ (v | tojson if v is mapping or (v is sequence and v is not string) else v | string) ~ '\\n</parameter>\\n' }}
{%- endfor %}
{{- '</function>\\n</tool_call>\\n' }}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- elif m.role == 'tool' %}
{%- if loop.first or loop.previtem.role != 'tool' %}{{ '<|im_start|>user\\n' }}{% endif %}
{{- '<tool_response>\\n' ~ m.content ~ '\\n</tool_response>\\n' }}
{%- if loop.last or loop.nextitem.role != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}
{%- else %}
{{- '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' ~ ('<think>\\n' if enable_thinking else '<think></think>') }}
{%- endif %}
"""

# Hermes/Qwen-2.5 shape: no `<think>` in the generation prompt, a system prompt only when given or when there
# are tools (tools as JSON lines), tool calls as JSON, tool results inside a user turn.
HERMES_LIKE = """
{%- if tools %}
{{- '<|im_start|>system\\n' ~ (messages[0].content ~ '\\n\\n' if messages[0].role == 'system' else '') }}
{{- '# Tools\\n<tools>' }}{% for t in tools %}{{ '\\n' ~ (t | tojson) }}{% endfor %}{{ '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' ~ messages[0].content ~ '<|im_end|>\\n' }}
{%- endif %}
{%- for m in messages %}
{%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}
{{- '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ '<|im_end|>\\n' }}
{%- elif m.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' ~ (m.content or '') }}
{%- for tc in m.tool_calls or [] %}
{{- '\\n<tool_call>\\n' ~ ({'name': tc.function.name, 'arguments': tc.function.arguments} | tojson) ~ '\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif m.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' ~ m.content ~ '\\n</tool_response><|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
"""

# Qwen3 shape: reasoning kept only for assistant turns after the last *real* user query (tool results do not count
# as queries), `<think>` written by the model itself, not by the generation prompt.
QWEN3_LIKE = """
{%- set ns = namespace(last_query=messages|length - 1, found=false) %}
{%- for m in messages[::-1] %}{% set i = messages|length - 1 - loop.index0 %}
{%- if m.role == 'user' and not ns.found and not m.content.startswith('<tool_response>') %}
{%- set ns.last_query = i %}{% set ns.found = true %}{% endif %}{% endfor %}
{%- for m in messages %}
{%- if m.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}
{%- if m.reasoning_content and loop.index0 > ns.last_query %}
{{- '<think>\\n' ~ m.reasoning_content ~ '\\n</think>\\n\\n' }}{% endif %}
{{- m.content or '' }}
{%- for tc in m.tool_calls or [] %}
{{- '\\n<tool_call>\\n{"name": "' ~ tc.function.name ~ '", "arguments": ' ~ (tc.function.arguments | tojson) ~ '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif m.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' ~ m.content ~ '\\n</tool_response><|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
"""


def _args(m):
    for tc in m.get("tool_calls") or []:
        f = tc.get("function", tc)
        a = f["arguments"]
        yield f["name"], json.loads(a) if isinstance(a, str) else a


def nano_output(m):
    """What the model writes after NANO_LIKE's generation prompt: `<think>\\n` for a message with reasoning,
    `<think></think>` (thinking off) for one without."""
    if m.get("reasoning_content"):
        text = m["reasoning_content"] + "\n</think>\n" + (m.get("content") or "")
    else:
        text = m.get("content") or ""
    text = text.rstrip()
    if m.get("tool_calls"):
        text += "\n"
        for name, args in _args(m):
            text += f"<tool_call>\n<function={name}>\n"
            for k, v in args.items():
                text += f"<parameter={k}>\n{json.dumps(v) if isinstance(v, (dict, list)) else v}\n</parameter>\n"
            text += "</function>\n</tool_call>\n"
    return text + "<|im_end|>"


def hermes_output(m):
    text = m.get("content") or ""
    for name, args in _args(m):
        text += "\n<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"
    return text + "<|im_end|>"


def qwen3_output(m):
    text = f"<think>\n{m['reasoning_content']}\n</think>\n\n" if m.get("reasoning_content") else ""
    text += m.get("content") or ""
    for name, args in _args(m):
        text += ('\n<tool_call>\n{"name": "' + name + '", "arguments": ' + json.dumps(args, ensure_ascii=False)
                 + "}\n</tool_call>")
    return text + "<|im_end|>"
