from .tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_tokenizer, save_tiny_tokenizer

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_tokenizer", "save_tiny_tokenizer"]
