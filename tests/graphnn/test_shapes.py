"""Shapes (graphnn/shapes.py): axis arguments."""
import pytest

from graphnn import shapes as S


def test_normalize_axes():
    assert S.normalize_axes(None, 3) == (0, 1, 2)
    assert S.normalize_axes(-1, 3) == (2,)
    assert S.normalize_axes((2, -3), 3) == (0, 2)
    assert S.normalize_axes((), 2) == ()
    with pytest.raises(S.Mismatch, match="axis 3 is out of range for rank 3"):
        S.normalize_axes(3, 3)
    with pytest.raises(S.Mismatch, match=r"repeated axis in \(1, -2\)"):
        S.normalize_axes((1, -2), 3)
