"""Metric sums of one bucket's users, the same for every algorithm."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from florec.client.trainers.bucket import Bucket
from florec.models.metrics import evaluate_users
from florec.recdata.runconfig import RunConfig


def bucket_metric_sums(score_fn: Callable[[torch.Tensor], torch.Tensor], bucket: Bucket,
                       cfg: RunConfig, partition_id: int, device: str,
                       item_pop: np.ndarray | None = None) -> dict[str, float]:
    """``valid/<metric>`` and ``test/<metric>`` sums over the bucket's users (plus counts).

    ``score_fn`` takes bucket-local user indices. With ``item_pop`` (the global popularity the
    node received, e.g. from the fair strategy's secure sum) the per-user ``arp@K`` sums are
    added; they pool over nodes like the accuracy sums. Item coverage is not computed here: a
    union of lists cannot be pooled by summing (it is reported by central runs only).
    """
    sums: dict[str, float] = {"partition-id": partition_id}
    users = np.arange(len(bucket.users))
    with torch.no_grad():
        for part in ("valid", "test"):
            part_sums = evaluate_users(score_fn, users, bucket.mask_for(part),
                                       getattr(bucket, part), cfg.k_list, cfg.eval_chunk, device,
                                       item_pop=item_pop)
            sums.update({f"{part}/{k}": v for k, v in part_sums.items()})
    return sums
