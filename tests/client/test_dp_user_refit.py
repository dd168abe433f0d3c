"""FedAvg-MF with ``user-refit-steps``: the node refits before training and before evaluating."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from florec.client import fedavg_node, node_store
from florec.client.evaluation import bucket_metric_sums
from florec.client.trainers.bpr_embedding import LocalConfig, local_update
from florec.client.trainers.bucket import Bucket
from florec.models.base import seeded_rows
from florec.models.mf import MF, USER_SALT
from florec.models.user_refit import EVAL, TRAIN, refit_user_emb
from florec.protocol.codec import from_record, to_record
from florec.protocol.user_rows import fedavg_upload
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.recdata.splits import make_split
from florec.recdata.synthetic import generate_synthetic
from florec.strategies.dp import check_dp

D = 8


@pytest.fixture(scope="module")
def split():
    return make_split(generate_synthetic(n_users=30, n_items=40, seed=0), "ratio", seed=0)


pytestmark = pytest.mark.usefixtures("fresh_node_store")


def message(kind: str, rnd: int, tables: dict) -> Message:
    return Message(RecordDict({"arrays": to_record(tables),
                               "config": ConfigRecord({"server-round": rnd})}),
                   dst_node_id=1, message_type=kind)


def setting(split):
    cfg = parse_run_config({"dataset": "synthetic", "dim": D, "aggregation": "sum",
                            "optimizer": "sgd", "lr": 0.5, "user-refit-steps": 7,
                            "user-refit-lr": 0.1, "local-batch-size": 4})
    bucket = Bucket.from_split(split, np.arange(12))
    init = MF(0, split.n_items, dim=D, seed=0)
    tables = {"item_emb": init.item_emb.detach().numpy(),
              "item_bias": init.item_bias.detach().numpy()}
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                  node_config={"partition-id": 0})
    return cfg, bucket, tables, ctx


def test_a_round_trains_from_the_refitted_rows(split):
    cfg, bucket, tables, ctx = setting(split)
    reply = fedavg_node.train(message("train", 3, tables), ctx, cfg, bucket, 0, "cpu")
    p0 = seeded_rows(bucket.users, D, cfg.seed, cfg.init_std, USER_SALT)
    start = refit_user_emb(bucket.train, bucket.users, p0, tables["item_emb"],
                           tables["item_bias"], 7, 0.1, cfg.reg, cfg.seed, 3, TRAIN)
    assert np.abs(start - p0).max() > 0.1
    want = local_update(bucket, tables["item_emb"], tables["item_bias"], start,
                        LocalConfig.from_run_config(cfg, 3), 3, "cpu")
    stored = node_store.open_store(ctx, cfg.store_spill_mb).get(fedavg_node.PRIVATE_KEY)
    np.testing.assert_allclose(stored["user_emb"], want.user_emb, atol=1e-6)
    deg = np.diff(bucket.train.indptr).astype(np.float64)
    payload, _ = fedavg_upload("none", "sparse", bucket.n_items, want.row_user, want.row_item,
                               want.delta, want.bias_delta, deg)
    upload = from_record(reply["arrays"])
    assert set(upload) == set(payload)
    for key, value in payload.items():
        np.testing.assert_allclose(upload[key], value, atol=1e-6)


def test_evaluation_scores_refitted_rows_and_leaves_the_stored_ones(split):
    cfg, bucket, tables, ctx = setting(split)
    fedavg_node.train(message("train", 1, tables), ctx, cfg, bucket, 0, "cpu")
    store = node_store.open_store(ctx, cfg.store_spill_mb)
    before = store.get(fedavg_node.PRIVATE_KEY)["user_emb"].copy()
    got = fedavg_node.evaluate(message("evaluate", 1, tables), ctx, cfg, bucket, 0, "cpu")
    np.testing.assert_array_equal(store.get(fedavg_node.PRIVATE_KEY)["user_emb"], before)
    refit = refit_user_emb(bucket.train, bucket.users, before, tables["item_emb"],
                           tables["item_bias"], 7, 0.1, cfg.reg, cfg.seed, 1, EVAL)
    model = MF.from_arrays(refit, tables["item_emb"], tables["item_bias"])
    want = bucket_metric_sums(model.score, bucket, cfg, 0, "cpu")
    plain = bucket_metric_sums(MF.from_arrays(before, tables["item_emb"],
                                              tables["item_bias"]).score, bucket, cfg, 0, "cpu")
    metrics = got["metrics"]
    for key in want:
        assert metrics[key] == pytest.approx(want[key], abs=1e-9)
    assert any(abs(want[k] - plain[k]) > 1e-6 for k in want if "ndcg" in k)


def test_user_refit_outside_fedavg_mf_is_refused_in_one_line():
    for extra in ({"algorithm": "fedcia"}, {"model": "lightgcn"}):
        cfg = parse_run_config({"user-refit-steps": 5} | extra)
        with pytest.raises(ConfigError, match="user-refit-steps") as err:
            check_dp(cfg)
        assert "\n" not in str(err.value)
