"""The chunked SSD scan and the one-step update against the token-by-token recurrence (mamba's ssd_minimal test)."""
import pytest
import torch
import torch.nn.functional as F

from nemoh.model.ssd import ssd_ref, ssd_scan, ssd_step


def _inputs(b=2, T=37, H=6, P=4, G=3, N=5):
    x = torch.randn(b, T, H, P)
    dt = F.softplus(torch.randn(b, T, H))
    A = -(torch.rand(H) * 2 + 0.1)
    return x, dt, A, torch.randn(b, T, G, N), torch.randn(b, T, G, N), torch.randn(H), torch.randn(b, H, P, N)


@pytest.mark.parametrize("chunk", [1, 4, 8, 37, 64])
def test_chunked_scan_equals_recurrence(chunk):
    x, dt, A, B, C, D, s0 = _inputs()
    y, s = ssd_scan(x, dt, A, B, C, chunk, D, s0)
    yr, sr = ssd_ref(x, dt, A, B, C, D, s0)
    assert (y - yr).abs().max() < 1e-4 and (s - sr).abs().max() < 1e-4


@pytest.mark.parametrize("chunk", [4, 8, 16])
def test_document_boundaries_reset_the_state(chunk):
    x, dt, A, B, C, D, s0 = _inputs()
    seq = torch.tensor([[0] * 5 + [1] * 13 + [2] * 19, [0] * 20 + [1] * 17])
    y, s = ssd_scan(x, dt, A, B, C, chunk, D, s0, seq_idx=seq)
    yr, sr = ssd_ref(x, dt, A, B, C, D, s0, seq_idx=seq)
    assert (y - yr).abs().max() < 1e-4 and (s - sr).abs().max() < 1e-4
    # the second document of row 0 alone, from a zero state, gives the same outputs
    sl = slice(5, 18)
    y2, _ = ssd_scan(x[:1, sl], dt[:1, sl], A, B[:1, sl], C[:1, sl], chunk, D)
    assert (y2 - y[:1, sl]).abs().max() < 1e-4


def test_step_continues_a_scan():
    x, dt, A, B, C, D, s0 = _inputs()
    y_all, _ = ssd_scan(x, dt, A, B, C, 8, D, s0)
    _, s = ssd_scan(x[:, :30], dt[:, :30], A, B[:, :30], C[:, :30], 8, D, s0)
    for t in range(30, 37):
        y, s = ssd_step(s, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        assert (y - y_all[:, t]).abs().max() < 1e-4


def test_causal_conv_matches_conv1d_with_gradients():
    from nemoh.model.mamba import causal_conv
    x = torch.randn(2, 19, 6, requires_grad=True)
    w = torch.randn(6, 4, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    out, state = causal_conv(x, w, bias, None, None)
    ref = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), w[:, None], bias, groups=6).transpose(1, 2)
    assert (out - ref).abs().max() < 1e-5 and torch.equal(state, x[:, -3:])
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, bias), g)
    want = torch.autograd.grad(ref, (x, w, bias), g)
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(grads, want))
    # packed: a document's taps stop at its first token
    seq = torch.tensor([[0] * 7 + [1] * 12] * 2)
    out, _ = causal_conv(x, w, bias, None, seq)
    alone, _ = causal_conv(x[:, 7:], w, bias, None, None)
    assert (out[:, 7:] - alone).abs().max() < 1e-5
    torch.autograd.gradcheck(lambda a, b_, c: causal_conv(a, b_, c, None, seq[:1, :10])[0],
                             (x.double()[:1, :10], w.double(), bias.double()))
