"""Log-probs of a given token sequence under the engine's model (no sampling): SGLang's `input_token_logprobs`,
vLLM's `prompt_logprobs`, and the probe that checks a server's weights equal the trainer's after a weight sync."""
from __future__ import annotations

import torch

from ..model import NemotronHForCausalLM


@torch.no_grad()
def sequence_logprobs(model: NemotronHForCausalLM, ids: list[int], temperature: float = 1.0) -> list[float]:
    """log p(ids[t] | ids[:t]) for t = 1 .. len(ids)-1 under softmax(logits / temperature), in float32."""
    if len(ids) < 2:
        raise ValueError("ids: need at least 2 tokens to score")
    x = torch.tensor([ids], device=model.device)
    logits = model(x).logits[0, :-1].float() / (temperature or 1.0)     # (T-1, V)
    logp = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])[:, 0]
    return logp.cpu().tolist()
