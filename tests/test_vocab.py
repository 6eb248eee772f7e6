import numpy as np
import pytest

from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError


def test_order_counts_min_count_and_lookup(tmp_path):
    v = Vocab.from_ids(["b", "a", "b", "c", "c", "c", "d"], min_count=1)
    assert list(v.ids) == ["c", "b", "a", "d"]  # count desc, ties by id
    assert list(v.counts) == [3, 2, 1, 1]
    assert v.index("b") == 1 and "d" in v and "z" not in v
    np.testing.assert_array_equal(v.lookup(["a", "z", "c"]), [2, -1, 0])
    assert list(Vocab.from_ids(["b", "a", "b"], min_count=2).ids) == ["b"]
    path = v.save(tmp_path / "vocab.parquet")
    w = Vocab.load(path)
    assert list(w.ids) == list(v.ids) and list(w.counts) == list(v.counts)


def test_unknown_id_and_duplicates():
    v = Vocab(["x", "y"])
    with pytest.raises(KeyError, match="unknown id 'q'"):
        v.index("q")
    with pytest.raises(DataValidationError, match="occurs twice"):
        Vocab(["x", "x"])
