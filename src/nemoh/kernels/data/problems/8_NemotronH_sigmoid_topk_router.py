import torch
import torch.nn as nn


class Model(nn.Module):
    """nemotron_h's MoE router: fp32 sigmoid scores, a correction bias that steers the choice only, group-limited
    top-k (keep the topk_group groups whose two best corrected scores sum highest), weights = the uncorrected
    scores of the chosen experts normalised to sum 1, times a scaling factor. Returned dense: (tokens, experts),
    zero where an expert was not chosen."""

    def __init__(self, hidden: int, experts: int, k: int, n_group: int, topk_group: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, hidden) * 0.1)
        self.register_buffer("bias", torch.randn(experts) * 0.05)
        self.k, self.n_group, self.topk_group, self.scale = k, n_group, topk_group, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.sigmoid(x.float() @ self.weight.float().t())                     # (n, E)
        n, E = scores.shape
        corrected = (scores + self.bias).view(n, self.n_group, E // self.n_group)
        group_score = corrected.topk(2, dim=-1).values.sum(-1)                         # (n, n_group)
        keep = group_score.topk(self.topk_group, dim=-1).indices
        mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
        corrected = corrected.masked_fill(~mask[..., None], float("-inf")).view(n, E)
        ids = corrected.topk(self.k, dim=-1).indices
        w = scores.gather(1, ids)
        w = w / w.sum(-1, keepdim=True) * self.scale
        return torch.zeros_like(scores).scatter_(1, ids, w)


def get_inputs():
    return [torch.randn(128, 64)]


def get_init_inputs():
    return [64, 32, 4, 4, 2, 2.5]
