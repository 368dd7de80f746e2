"""Factory module used by tests/test_score.py and tests/test_reliability.py: copied into a temporary folder
and imported by `pfd score` the way a user's own model module is."""

import torch

import pfd


class GMMDenoiser(torch.nn.Module):
    event_shape = (2,)

    def __init__(self, scale=1.0):
        super().__init__()
        self.gmm = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])
        self.scale = torch.nn.Parameter(torch.tensor(float(scale), dtype=torch.float64))

    def forward(self, x, sigma):
        return self.scale * self.gmm.denoiser(x, sigma)


def teacher(scale=1.0):
    return GMMDenoiser(scale)


def student(width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.Tanh(), torch.nn.Linear(width, 2)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


class BrokenAtSmallSigma(torch.nn.Module):
    """A denoiser that returns NaN for sample 1 below sigma = 1 (a numerically broken model)."""

    event_shape = (2,)

    def __init__(self):
        super().__init__()
        self.inner = GMMDenoiser()

    def forward(self, x, sigma):
        out = self.inner(x, sigma)
        if float(sigma[0]) < 1.0:
            out = out.clone()
            out[1] = float("nan")
        return out


def broken():
    return BrokenAtSmallSigma()


def wide():
    """A 3-D model: a different sample shape from the 2-D teacher."""
    net = student()
    return torch.nn.Sequential(net, torch.nn.Linear(2, 3).double())


def raises():
    raise RuntimeError("checkpoint file missing")


def not_a_model():
    return 42
