"""Gradients (gradcheck) and pickling of the newer layers: activations, resizing, graphs,
positional attention, recurrent networks."""

import pickle

import pytest
import torch

from ntkit import layers as L
from tests.layers.test_gradients import _check_inputs, _check_params, _outputs, gradcheck

F64 = torch.float64


def _decay(d):
    return torch.exp(-d / 3.0)


@pytest.mark.parametrize("act", [L.Gabor(), L.SigmoidLike(), L.ExpNormalized(0.7, -0.8)], ids=repr)
def test_activation_inputs(act):
    _check_inputs(L.serial(L.Dense(3, b_std=0.2), act, L.Dense(1)), (4,))


def test_exp_normalized_parameters():
    def build(gamma, shift):
        return L.serial(L.Dense(3, b_std=0.2), L.ExpNormalized(gamma, shift), L.Dense(1))

    _check_params(build, (0.7, -0.8), (4,))


def test_resize_and_index_inputs():
    net = L.serial(
        L.Conv(2, 2, padding="same"),
        L.ReLU(),
        L.ImageResize((4, 3)),
        L.Index(slice(1, None)),
        L.Conv(2, 1),
        L.ReLU(),
        L.GlobalAvgPool(),
        L.Dense(1),
    )
    _check_inputs(net, (1, 3, 2), n1=2, n2=2)


def test_recurrent_inputs_and_parameters():
    def build(w, u, b):
        return L.serial(L.Recurrent(3, L.Erf(), w_std=w, u_std=u, b_std=b), L.Dense(1))

    _check_inputs(build(1.1, 0.9, 0.2), (2, 3))
    _check_params(build, (1.1, 0.9, 0.2), (2, 3))


def test_positional_attention_inputs_and_parameters():
    def build(std, qk):
        att = L.GlobalSelfAttention(
            3, qk_std=qk, pos_emb="sum", pos_emb_std=std, pos_emb_decay=_decay, value_pos_emb=True
        )
        return L.serial(L.Conv(3, 1, b_std=0.1), att, L.ReLU(), L.GlobalAvgPool(), L.Dense(1))

    _check_inputs(build(0.7, 0.8), (2, 3), n1=2, n2=2)
    _check_params(build, (0.7, 0.8), (2, 3), n1=2, n2=2)


def test_aggregate_features_gradient():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(2, 2, 4, generator=g, dtype=F64, requires_grad=True)
    x2 = torch.randn(2, 2, 4, generator=g, dtype=F64, requires_grad=True)
    a1 = (torch.rand(2, 4, 4, generator=g) < 0.5).double() + torch.eye(4, dtype=F64)
    a2 = (torch.rand(2, 4, 4, generator=g) < 0.5).double() + torch.eye(4, dtype=F64)
    net = L.serial(L.Conv(3, 1, b_std=0.1), L.Aggregate(), L.ReLU(), L.GlobalSumPool(), L.Dense(1))
    assert gradcheck(lambda a, b: _outputs(net.kernel(L.Graphs(a, a1), L.Graphs(b, a2))), (x1, x2))


def test_new_layers_pickle_and_give_the_same_kernel():
    x = torch.randn(3, 2, 4, 4, dtype=F64)
    net = L.serial(
        L.ConvTranspose(3, 2, stride=2, padding="same"),
        L.Gabor(),
        L.ConvLocal(3, 3, padding="same"),
        L.SigmoidLike(),
        L.ImageResize((4, 4)),
        L.Index(slice(None, None, 2)),
        L.GlobalSelfAttention(3, pos_emb="concat", pos_emb_decay=_decay),
        L.ExpNormalized(),
        L.GlobalAvgPool(),
        L.Dense(1),
    )
    again = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(again.kernel(x).ntk, net.kernel(x).ntk, rtol=0, atol=0)
    rnn = L.serial(L.Conv(3, 1), L.Recurrent(4, L.Erf()), L.Dense(1))
    torch.testing.assert_close(
        pickle.loads(pickle.dumps(rnn)).kernel(x[:, :, 0]).ntk, rnn.kernel(x[:, :, 0]).ntk
    )
    gnn = L.serial(L.Conv(3, 1), L.Aggregate(), L.ReLU(), L.GlobalSumPool())
    a = torch.eye(4, dtype=F64).expand(3, 4, 4)
    graphs = L.Graphs(x[:, :, 0], a)
    torch.testing.assert_close(
        pickle.loads(pickle.dumps(gnn)).kernel(graphs).nngp, gnn.kernel(graphs).nngp
    )
    model = pickle.loads(pickle.dumps(rnn.module((2, 4))))
    assert model(x[:, :, 0].float()).shape == (3, 1)


@pytest.mark.parametrize(
    "net,shape",
    [
        (L.serial(L.Dense(4, b_std=0.1), L.Gabor(), L.Dense(3), L.SigmoidLike(), L.Dense(1)), (5,)),
        (L.serial(L.Dense(4), L.ExpNormalized(0.5), L.Dense(1)), (5,)),
        (L.serial(L.Recurrent(4, L.ReLU(), b_std=0.1), L.Dense(1)), (2, 6)),
        (
            L.serial(
                L.Conv(3, 1),
                L.GlobalSelfAttention(3, pos_emb="concat", pos_emb_decay=_decay),
                L.ReLU(),
                L.GlobalAvgPool(),
                L.Dense(1),
            ),
            (2, 5),
        ),
    ],
    ids=["gabor-sigmoid", "exp-normalized", "recurrent", "positional-attention"],
)
def test_properties(net, shape):
    from tests.layers.layer_checks import assert_properties, assert_tiling_invariant, randn

    x1, x2 = randn((4, *shape), 0), randn((3, *shape), 1)
    assert_properties(net, x1, x2)
    assert_tiling_invariant(net, x1, x2)
