"""Random initialisation for models built from a config (checkpoint loads overwrite all of it)."""
from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .config import NemotronHConfig


@torch.no_grad()
def init_weights(model: nn.Module) -> None:
    """Normal(0, initializer_range) for linears and embeddings; Mamba's A_log/D/dt_bias as in mamba_ssm
    (dt sampled log-uniformly in [time_step_min, time_step_max], stored through the inverse softplus)."""
    from .mamba import Mamba2Mixer
    from .moe import Experts, Router
    c = cast(NemotronHConfig, model.config)
    std = c.initializer_range
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, std=std)
            bias = getattr(mod, "bias", None)
            if bias is not None:
                nn.init.zeros_(bias)
        elif isinstance(mod, Router):
            nn.init.normal_(mod.weight, std=std)
            nn.init.zeros_(mod.e_score_correction_bias)
        elif isinstance(mod, Experts):
            nn.init.normal_(mod.up_proj, std=std)
            nn.init.normal_(mod.down_proj, std=std)
        elif isinstance(mod, Mamba2Mixer):
            H = mod.H
            mod.A_log.copy_(torch.log(torch.arange(1, H + 1, dtype=torch.float32)))
            mod.D.fill_(1.0)
            lo, hi = math.log(c.time_step_min), math.log(c.time_step_max)
            dt = torch.exp(torch.rand(H) * (hi - lo) + lo).clamp(min=c.time_step_floor)
            mod.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            nn.init.kaiming_uniform_(mod.out_proj.weight, a=math.sqrt(5))
            mod.out_proj.weight.div_(math.sqrt(c.num_hidden_layers))
