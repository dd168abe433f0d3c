"""Reply checks on the server: each reply decoded once, with the reason it cannot be folded."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, RecordDict

from florec.protocol.codec import to_record
from florec.sim.local_grid import LocalGrid
from florec.strategies.payload import checked_arrays

EXPECTED = {"items": 0, "item_emb": 3}


def _reply(content):
    """The reply of a one-node in-process grid whose node answers ``content``."""
    grid = LocalGrid({}, 1, handlers={MessageType.TRAIN: lambda m, ctx: Message(content,
                                                                                  reply_to=m)})
    request = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=1)
    return grid.send_and_receive([request])[0]


def _arrays(**changes):
    arrays = {"items": np.array([0, 4]), "item_emb": np.ones((2, 3), np.float32)}
    return RecordDict({"arrays": to_record(arrays | changes)})


def test_a_good_reply_comes_back_decoded_with_no_problem():
    arrays, problem = checked_arrays(_reply(_arrays()), EXPECTED)
    assert problem is None
    assert np.array_equal(arrays["items"], [0, 4])
    assert arrays["item_emb"].shape == (2, 3) and arrays["item_emb"].dtype == np.float32


@pytest.mark.parametrize(("content", "reason"), [
    (Error(code=0, reason="boom"), "client error: boom"),
    (RecordDict(), "reply has no 'arrays' record"),
    (RecordDict({"arrays": to_record({"items": np.array([0])})}), "lacks array 'item_emb'"),
    (_arrays(item_emb=np.ones((2, 4), np.float32)), "has shape (2, 4)"),
    (_arrays(item_emb=np.full((2, 3), np.nan, np.float32)), "holds NaN or inf"),
    (RecordDict({"arrays": ArrayRecord({"items": Array(dtype="int64", shape=(2,),
                                                       stype="numpy.ndarray",
                                                       data=b"\x93NUMPY\x01\x00")})}),
     "undecodable arrays"),
    (RecordDict({"arrays": ArrayRecord({"items": Array(dtype="int64", shape=(2,),
                                                       stype="torch.Tensor", data=b"1234")})}),
     "undecodable arrays"),
])
def test_a_bad_reply_gets_a_problem_naming_the_cause(content, reason):
    _, problem = checked_arrays(_reply(content), EXPECTED)
    assert problem is not None and reason in problem
