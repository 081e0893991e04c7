"""Reward functions the RL tests load by import path (module:function), as a user would."""
import random


def lowercase_share(response: str, label) -> float:
    """Trivially learnable: the share of lowercase letters in the response."""
    return sum(c.islower() for c in response) / max(1, len(response))


def flaky(response: str, label) -> float:
    if random.random() < 0.3:
        raise RuntimeError("reward service unavailable")
    return float(len(response) % 2)


def even_labels_always_agree(responses: list, label) -> list:
    """Per group: prompts with an even answer give every sample 1.0 (no signal); odd ones alternate 0/1."""
    if int(label) % 2 == 0:
        return [1.0] * len(responses)
    return [float(i % 2) for i in range(len(responses))]
