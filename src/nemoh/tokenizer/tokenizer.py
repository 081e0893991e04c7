"""Tokenizer: a checkpoint's tokenizer.json + tokenizer_config.json (chat template included), without transformers.

The chat template is rendered with jinja2 in a sandbox, with the helpers Hub templates use (`tojson`,
`raise_exception`, `strftime_now`), after `normalize_messages` (OpenAI shapes -> template shapes)."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer as _HFTokenizer

from .messages import normalize_messages

if TYPE_CHECKING:
    from jinja2 import Template

THINK_START, THINK_END = "<think>", "</think>"


def _raise(message: str) -> None:
    raise ValueError(f"chat template: {message}")


class Tokenizer:
    def __init__(self, tok: _HFTokenizer, config: dict[str, Any], chat_template: str | None):
        self._tok = tok
        self.config = config
        self.chat_template = chat_template
        self._template: Template | None = None
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.special_ids = set(tok.get_added_tokens_decoder())
        self.eos_token = _content(config.get("eos_token"))
        self.eos_token_id = self.token_to_id(self.eos_token) if self.eos_token else None
        self.think_start_id = self.token_to_id(THINK_START)
        self.think_end_id = self.token_to_id(THINK_END)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        tj = path / "tokenizer.json"
        if not tj.exists():
            raise ValueError(f"{path}: no tokenizer.json")
        cfg_path = path / "tokenizer_config.json"
        config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        template = config.get("chat_template")
        if (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        return cls(_HFTokenizer.from_file(str(tj)), config, template)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict] | None = None,
                            add_generation_prompt: bool = True, **kwargs: Any) -> str:
        if not self.chat_template:
            raise ValueError("tokenizer: this checkpoint has no chat template "
                             "(tokenizer_config.json chat_template)")
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = _tojson
            env.filters["fromjson"] = json.loads
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = env.from_string(self.chat_template)
        special = {k: _content(v) for k, v in self.config.items() if k.endswith("_token")}
        # the one place every rendering passes: server, chat datasets, LLM.chat/generate
        return self._template.render(messages=normalize_messages(messages), tools=tools,
                                     add_generation_prompt=add_generation_prompt, **special, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (e.g. to the server's worker processes) without the compiled template: rebuilt on first use."""
        return {**self.__dict__, "_template": None}


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' `tojson` (same defaults), so renderings match `apply_chat_template` byte for byte."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _content(tok: Any) -> str | None:
    return tok.get("content") if isinstance(tok, dict) else tok
