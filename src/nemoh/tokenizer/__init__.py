from .messages import normalize_messages
from .tiny import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    build_tiny_tokenizer,
    save_tiny_tokenizer,
)
from .tokenizer import Tokenizer

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "Tokenizer", "normalize_messages", "build_tiny_tokenizer",
           "save_tiny_tokenizer"]
