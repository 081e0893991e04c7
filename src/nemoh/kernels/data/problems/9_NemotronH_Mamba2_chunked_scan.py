import torch
import torch.nn as nn


class Model(nn.Module):
    """The Mamba2 (SSD) scan of nemotron_h, chunked: within a chunk, y = (C B^T * decay mask) x dt; across chunks
    the state h (H, P, N) is carried with its decay. Heads share B and C within a group. D skip included.
    x (b, T, H, P), dt (b, T, H) > 0, B and C (b, T, G, N) -> y (b, T, H, P)."""

    def __init__(self, heads: int, chunk: int):
        super().__init__()
        self.A_log = nn.Parameter(torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(heads))
        self.chunk = chunk

    def forward(self, x, dt, B, C):
        b, T, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        A = -torch.exp(self.A_log)                                                     # (H,)
        B = B.repeat_interleave(H // G, dim=2)                                         # (b, T, H, N)
        C = C.repeat_interleave(H // G, dim=2)
        L, nc = self.chunk, T // self.chunk
        x, dt, B, C = (t.reshape(b, nc, L, *t.shape[2:]) for t in (x, dt, B, C))
        a = dt * A                                                                     # (b, nc, L, H)
        cum = torch.cumsum(a, dim=2)
        seg = cum[:, :, :, None, :] - cum[:, :, None, :, :]                           # (b, nc, L, L, H)
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool))[None, None, :, :, None]
        decay = torch.exp(seg.masked_fill(~causal, float("-inf")))
        scores = torch.einsum("bclhn,bcshn->bclsh", C, B) * decay
        y = torch.einsum("bclsh,bcsh,bcshp->bclhp", scores, dt, x)                     # within chunks
        state = torch.zeros(b, H, P, N)
        ys = []
        for c in range(nc):                                                            # across chunks
            y_prev = torch.einsum("blhn,bhpn->blhp", C[:, c], state) * torch.exp(cum[:, c])[..., None]
            ys.append(y[:, c] + y_prev)
            tail = torch.exp(cum[:, c, -1:] - cum[:, c])                               # (b, L, H)
            state = state * torch.exp(cum[:, c, -1])[:, :, None, None] + torch.einsum(
                "blh,blhn,blhp->bhpn", tail * dt[:, c], B[:, c], x[:, c])
        out = torch.stack(ys, 1).reshape(b, T, H, P)
        return out + x.reshape(b, T, H, P) * self.D[:, None]


def get_inputs():
    b, T, H, P, G, N = 2, 64, 4, 16, 2, 16
    return [torch.randn(b, T, H, P), torch.rand(b, T, H) * 0.1 + 0.01, torch.randn(b, T, G, N) * 0.5,
            torch.randn(b, T, G, N) * 0.5]


def get_init_inputs():
    return [4, 16]
