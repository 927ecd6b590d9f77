"""Masks for variable-length inputs: exact equalities with unpadded inputs, Monte Carlo, errors."""

import numpy as np
import pytest
import torch

import ntkit.layers as L
from tests.layers.layer_checks import assert_tiling_invariant, jacobian_ntk, randn, rel


def _net(width=4, pos=None):
    """Position-wise layers, then masked attention and pooling: padding must not matter."""
    kw = {} if pos is None else dict(pos_emb="sum", pos_emb_decay=pos)
    return L.serial(
        L.Conv(width, 1, b_std=0.2),
        L.ReLU(),
        L.GlobalSelfAttention(width, n_heads=2, key_channels=width, qk_std=0.8, b_std=0.1, **kw),
        L.Erf(),
        L.GlobalAvgPool(),
    )


def _pad(x, length, seed=0):
    """Pad the last axis to ``length`` with garbage, and the mask of real positions."""
    n, c, real = x.shape
    junk = randn((n, c, length - real), seed) * 5
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[:, :real] = True
    return torch.cat([x, junk], dim=-1), mask


@pytest.mark.parametrize("readout", [L.Dense(1), L.Dense(1, parameterization="standard")])
def test_padded_and_masked_equals_unpadded(readout):
    """Same real length everywhere: masking padding of any content gives the unpadded kernel."""
    net = L.serial(_net(), readout)
    x1, x2 = randn((3, 2, 5), 0), randn((2, 2, 5), 1)
    want = net.kernel(x1, x2)
    p1, m1 = _pad(x1, 8, seed=2)
    p2, m2 = _pad(x2, 8, seed=3)
    got = net.kernel(L.Masked(p1, m1), L.Masked(p2, m2))
    torch.testing.assert_close(got.nngp, want.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.ntk, want.ntk, rtol=1e-12, atol=1e-14)
    sym = net.kernel(L.Masked(p1, m1))
    torch.testing.assert_close(sym.ntk, net.kernel(x1).ntk, rtol=1e-12, atol=1e-14)


def test_variable_lengths_pairwise():
    """Each pair of sequences with lengths (L_i, L_j): entries of one masked batch equal the
    kernels of the unpadded pairs of equal length, and padding content does not matter."""
    net = L.serial(_net(), L.Dense(1))
    lengths = [5, 3, 5, 3]
    xs = [randn((1, 2, n), 10 + i) for i, n in enumerate(lengths)]
    padded = torch.cat([_pad(x, 6, seed=20 + i)[0] for i, x in enumerate(xs)])
    mask = torch.tensor([[t < n for t in range(6)] for n in lengths])
    k = net.kernel(L.Masked(padded, mask))
    for i in range(4):
        for j in range(4):
            if lengths[i] == lengths[j]:
                ref = net.kernel(xs[i], xs[j]).ntk[0, 0]
                torch.testing.assert_close(k.ntk[i, j], ref, rtol=1e-11, atol=1e-13)
    other = padded.clone()
    other[mask.unsqueeze(1).expand_as(other).logical_not()] = 7.0
    torch.testing.assert_close(net.kernel(L.Masked(other, mask)).ntk, k.ntk, rtol=1e-12, atol=0)
    assert_tiling_invariant(net, L.Masked(padded, mask))


@pytest.mark.montecarlo
def test_finite_masked_networks_converge():
    lengths = [4, 2, 3]
    x = torch.cat(
        [_pad(randn((1, 2, n), 30 + i), 5, seed=40 + i)[0] for i, n in enumerate(lengths)]
    )
    mask = torch.tensor([[t < n for t in range(5)] for n in lengths])

    def errors(width):
        body = _net(width)
        net = L.serial(body, L.Dense(1, b_std=0.1))
        nngp = body.kernel(L.Masked(x, mask), get="nngp").nngp
        ntk = net.kernel(L.Masked(x, mask)).ntk
        e1, e2 = [], []
        for s in (0, 1, 2):
            model = body.module((2, 5), seed=s, dtype=torch.float64)
            with L.mask_context(mask), torch.no_grad():
                f = model(x)
            e1.append(rel(f @ f.T / f.shape[1], nngp))
            full = net.module((2, 5), seed=s, dtype=torch.float64)
            e2.append(rel(jacobian_ntk(full, x, lambda: L.mask_context(mask)), ntk))
        return np.mean(e1), np.mean(e2)

    narrow, wide = errors(16), errors(256)
    for e_small, e_big in zip(narrow, wide):
        # attention's logits fluctuate like key_channels^-1/2 on top: bound 0.3 as unmasked
        assert e_big < 0.5 * e_small and e_big < 0.3, (narrow, wide)


def test_bad_input():
    x = randn((3, 2, 5), 0)
    mask = torch.ones(3, 5, dtype=torch.bool)
    net = L.serial(_net(), L.Dense(1))
    with pytest.raises(ValueError, match=r"mask must have shape \(n, \*spatial\) = \(3, 5\)"):
        net.kernel(L.Masked(x, mask[:, :4]))
    with pytest.raises(ValueError, match="without any real position"):
        net.kernel(L.Masked(x, mask & torch.tensor([True, False, True])[:, None]))
    with pytest.raises(TypeError, match="both be ntkit.layers.Masked"):
        net.kernel(L.Masked(x, mask), x)
    graphs = L.Graphs(x, torch.eye(5).expand(3, 5, 5))
    with pytest.raises(TypeError, match=r"Masked\(Graphs\(...\)\) is not supported"):
        net.kernel(L.Masked(graphs, mask))
    strided = L.serial(L.Conv(3, 2, stride=2), L.GlobalAvgPool(), L.Dense(1))
    with pytest.raises(ValueError, match="masks travel through shape-preserving layers"):
        strided.kernel(L.Masked(x, mask))
    model = strided.module((2, 5))
    with L.mask_context(mask), pytest.raises(ValueError, match="shape-preserving"):
        model(x.float())


def test_tiling_package_refuses_masked_and_graph_inputs():
    """ntkit.tiling's tiles take plain tensors: side information would be lost, so refuse."""
    from ntkit.tiling import kernel_matrix

    x = randn((3, 2, 5), 0)
    mask = torch.ones(3, 5, dtype=torch.bool)
    with pytest.raises(TypeError, match="does not take ntkit.layers.Masked or Graphs"):
        kernel_matrix(L.serial(_net(), L.Dense(1)), L.Masked(x, mask))
    gnn = L.serial(L.Conv(3, 1), L.Aggregate(), L.GlobalSumPool(), L.Dense(1))
    with pytest.raises(TypeError, match="does not take ntkit.layers.Masked or Graphs"):
        kernel_matrix(gnn, L.Graphs(x, torch.eye(5).expand(3, 5, 5)))


def test_feature_gradients_work_and_parameter_gradients_refuse_clearly():
    from tests.layers.test_gradients import gradcheck

    x = randn((2, 2, 4), 0).requires_grad_(True)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    net = L.serial(_net(3), L.Dense(1))
    assert gradcheck(lambda a: (net.kernel(L.Masked(a, mask)).ntk,), (x,))
    w = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    tensor_net = L.serial(L.Conv(3, 1, w_std=w), L.GlobalSelfAttention(3), L.GlobalAvgPool())
    with pytest.raises(TypeError, match="not available for ntkit.layers.Graphs or Masked"):
        tensor_net.kernel(L.Masked(x.detach(), mask))
