"""Metric sums of one bucket's users, the same for every algorithm."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from florec.client.attacks import AttackKnowledge, benign_rows
from florec.client.trainers.bucket import Bucket
from florec.models.exposure import exposure_sums
from florec.models.metrics import evaluate_users
from florec.recdata.runconfig import RunConfig


def bucket_metric_sums(score_fn: Callable[[torch.Tensor], torch.Tensor], bucket: Bucket,
                       cfg: RunConfig, partition_id: int, device: str,
                       item_pop: np.ndarray | None = None,
                       know: AttackKnowledge | None = None) -> dict[str, float]:
    """``valid/<metric>`` and ``test/<metric>`` sums over the bucket's users (plus counts).

    ``score_fn`` takes bucket-local user indices. With ``item_pop`` (the global popularity the
    node received, e.g. from the fair strategy's secure sum) the per-user ``arp@K`` sums are
    added; they pool over nodes like the accuracy sums. Item coverage is not computed here: a
    union of lists cannot be pooled by summing (it is reported by central runs only).
    With attack knowledge ``know`` (:mod:`florec.client.attacks`) malicious users are left out
    and the target items' exposure sums are added (:func:`florec.models.exposure.exposure_sums`).
    """
    sums: dict[str, float] = {"partition-id": partition_id}
    users = benign_rows(bucket, know)
    with torch.no_grad():
        for part in ("valid", "test"):
            part_sums = evaluate_users(score_fn, users, bucket.mask_for(part),
                                       getattr(bucket, part), cfg.k_list, cfg.eval_chunk, device,
                                       item_pop=item_pop)
            sums.update({f"{part}/{k}": v for k, v in part_sums.items()})
        if know is not None and len(know.targets):
            seen = bucket.train + bucket.valid + bucket.test
            sums.update(exposure_sums(score_fn, users, bucket.mask_for("test"), seen,
                                      know.targets, cfg.k_list, cfg.eval_chunk, device))
    return sums
