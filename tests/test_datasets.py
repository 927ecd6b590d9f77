"""The bundled dataset."""

import torch

from ntkit.datasets import load_digits


def test_digits_split_is_disjoint_standardized_and_seeded():
    a = load_digits(300, 100, seed=1)
    b = load_digits(300, 100, seed=1)
    assert a.x_train.shape == (300, 64) and a.y_test.shape == (100, 10)
    assert torch.equal(a.x_train, b.x_train)
    torch.testing.assert_close(
        a.x_train.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-12, rtol=0
    )
    train_rows = {tuple(r) for r in a.x_train.numpy().round(8)}
    test_rows = [tuple(r) for r in a.x_test.numpy().round(8)]
    # digits has a few duplicate images; the split itself must not reuse indices
    assert sum(r in train_rows for r in test_rows) < 5
    assert torch.equal(a.y_train.argmax(1), a.labels_train)
