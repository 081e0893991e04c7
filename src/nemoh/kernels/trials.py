"""The trial plan: which inputs a candidate is judged on. Besides the problem's own `get_inputs` under a few seeds,
the same inputs transformed (sign-flipped, scaled up, scaled down; shapes unchanged) so that a kernel which is only
right for the distribution `get_inputs` happens to draw (a ReLU that copies non-negative inputs, a constant) fails.

The reference process applies the transforms (`ref_worker.TRANSFORMS`, floating-point tensors only); a transformed
trial whose reference output is not finite where the plain one was is skipped (the transform left the problem's
domain: a log of negatives) and the verdict lists the trials that ran.
"""
from __future__ import annotations

from dataclasses import dataclass

# powers of two: the scaled inputs are exact, so only the op's own behaviour changes
TRANSFORMS = ("neg", "up", "down")     # -x, 8x, x/8


@dataclass(frozen=True)
class Trial:
    name: str          # "seed0", "neg", ...
    seed: int          # torch.manual_seed before get_inputs()
    transform: str     # "none" or one of TRANSFORMS

    def to_dict(self) -> dict:
        return {"name": self.name, "seed": self.seed, "transform": self.transform}


def plan(seed: int, seeds: int, transforms: tuple[str, ...] = TRANSFORMS) -> list[Trial]:
    """`seeds` plain trials, then each transform of a plain trial's inputs (alternating which one)."""
    if seeds < 1:
        raise ValueError(f"trials: need at least 1 seeded trial, got {seeds}")
    unknown = set(transforms) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"transforms: unknown {sorted(unknown)} (known: {', '.join(TRANSFORMS)})")
    trials = [Trial(f"seed{i}", seed + 1 + i, "none") for i in range(seeds)]
    trials += [Trial(t, seed + 1 + i % seeds, t) for i, t in enumerate(transforms)]
    return trials
