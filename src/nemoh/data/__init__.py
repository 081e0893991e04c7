from .chat import (
           Example,
           chat_examples,
           load_chat_examples,
           tokenize_chat,
           validate_chat,
)
from .packing import PackedBatch, collate, pack
from .prompts import PromptExample, load_prompt_examples
from .readers import DataError, ErrorLog, read_rows, write_jsonl_atomic

__all__ = ["Example", "chat_examples", "load_chat_examples", "tokenize_chat", "validate_chat", "PackedBatch", "collate",
           "pack", "PromptExample", "load_prompt_examples", "DataError", "ErrorLog", "read_rows", "write_jsonl_atomic"]
