"""The live path's matmuls per precision (`engine.linear`). Protects: each precision stays close
to fp32, for narrow matrices and for wide ones (`linear_skinny`); fp32 rows give the same bits
whatever the other rows hold at a fixed row count; int8 rows asked to be independent give the same
bits whatever the other rows hold and however many there are; an unknown or impossible precision is
one clear sentence."""

import pytest
import torch
from musicgen_live.engine.errors import UserError
from musicgen_live.engine.linear import PRECISIONS, SKINNY_MIN_IN, check_precision, make_linear

W = torch.randn(384, 256, generator=torch.Generator().manual_seed(0)) / 16
X = torch.randn(6, 256, generator=torch.Generator().manual_seed(1))
# past SKINNY_MIN_IN inputs the dense path multiplies through `linear_skinny` (musicgen-small's widths)
W_WIDE = torch.randn(384, 2 * SKINNY_MIN_IN, generator=torch.Generator().manual_seed(2)) / 32
X_WIDE = torch.randn(6, 2 * SKINNY_MIN_IN, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("w, x", [(W, X), (W_WIDE, X_WIDE)], ids=["narrow", "wide"])
@pytest.mark.parametrize("precision, tol", [("float32", 1e-5), ("float16", 2e-3), ("bfloat16", 1e-2), ("int8", 3e-2)])
def test_each_precision_is_close_to_float32(precision, tol, w, x):
    ref = x @ w.T
    got = make_linear(w, precision)(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert ((got - ref).norm() / ref.norm()) < tol


@pytest.mark.parametrize("w, x", [(W, X), (W_WIDE, X_WIDE)], ids=["narrow", "wide"])
def test_float32_rows_do_not_depend_on_the_other_rows_at_a_fixed_row_count(w, x):
    """What `engine.batch` relies on to pad every forward to one row count."""
    lin = make_linear(w, "float32")
    ref = lin(x)
    for others in (x[1:] * 50, torch.zeros_like(x[1:]), x[1:].flip(0)):
        assert torch.equal(lin(torch.cat([x[:1], others]))[:1], ref[:1])


def test_int8_independent_rows_do_not_depend_on_the_other_rows():
    lin = make_linear(W, "int8")
    alone = lin(X[:1], independent_rows=True)
    for others in (X[1:2] * 50, X[1:], torch.zeros(9, 256)):
        both = lin(torch.cat([X[:1], others]), independent_rows=True)
        assert torch.equal(both[:1], alone)


def test_unknown_or_impossible_precision_gets_one_sentence():
    assert "int8" in PRECISIONS
    with pytest.raises(UserError, match="unknown precision 'int3'"):
        check_precision("int3", torch.device("cpu"))
    with pytest.raises(UserError, match="CPU only"):
        check_precision("int8", torch.device("cuda"))
