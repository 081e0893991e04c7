"""A tiny random nemotron_h checkpoint with the built-in byte-level tokenizer: the CPU default for every job."""
from __future__ import annotations

from pathlib import Path

from ..tokenizer import SPECIAL_TOKENS, save_tiny_tokenizer
from ..tokenizer.tiny import tiny_vocab_size
from .model import NemotronHForCausalLM
from .presets import get_preset


def init_tiny(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a tiny random nemotron_h checkpoint with the built-in byte-level tokenizer into `out_dir`."""
    out = Path(out_dir)
    im_end = SPECIAL_TOKENS.index("<|im_end|>")
    config = get_preset(preset).replace(vocab_size=max(tiny_vocab_size(), 256), eos_token_id=[2, im_end])
    config.vocab_size = (config.vocab_size + 63) // 64 * 64  # pad the vocab like real checkpoints do
    model = NemotronHForCausalLM.from_config(config, seed=seed)
    tok_dir = out.with_name(f".{out.name}.tok")
    save_tiny_tokenizer(tok_dir)
    model.save_pretrained(out, tokenizer_dir=tok_dir)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return out
