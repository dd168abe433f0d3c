"""A node's ranking masks are the rows of the split's masks (one definition for both)."""

import numpy as np
import pytest

from florec.client.trainers.bucket import Bucket
from florec.recdata.splits import make_split, ranking_mask
from florec.recdata.synthetic import generate_synthetic


@pytest.mark.parametrize("part", ["valid", "test"])
def test_bucket_mask_is_the_rows_of_the_split_mask(part):
    split = make_split(generate_synthetic(n_users=20, n_items=30, seed=1), "loo", seed=0)
    users = np.array([2, 5, 11, 17])
    bucket = Bucket.from_split(split, users)
    want = split.mask_for(part)[users].toarray()
    np.testing.assert_array_equal(bucket.mask_for(part).toarray(), want)
    if part == "test":  # valid items are masked when ranking for test, once each
        assert set(np.unique(want)) <= {0.0, 1.0}
        assert (want >= split.matrix("valid")[users].toarray()).all()


def test_a_ranking_mask_for_train_is_refused():
    split = make_split(generate_synthetic(n_users=8, n_items=30, seed=1), "loo", seed=0)
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        ranking_mask("train", split.matrix("train"), split.matrix("valid"))
