"""Oracle4Rec (Xia et al., WSDM 2025) as a generic module over SASRec and GRU4Rec.

Two encoders of the backbone's architecture, each with ``filter-layers`` low-pass filter layers,
share ONE embedding module (item and, for SASRec, position tables; oracle4rec.md §6.1). The
**future** encoder reads the window's later items and is trained on them; the **past** encoder is
trained on the next-item loss plus the oracle-guiding loss that pulls its representation towards
the (detached) future representations. Only the past encoder scores items (inference).

Two-phase training per minibatch with two Adam optimisers is in
:func:`florec.client.trainers.sequential.oracle_step`; :func:`oracle_optimizers` builds them, both
holding the shared embedding parameters (one table, two Adam updates per minibatch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from florec.models.gru4rec import GRU4RecBody
from florec.models.sasrec import SASRecBody
from florec.models.seq_layers import SeqEmbedding, SequentialRecommender, init_weights, rec_loss

BACKBONES = ("sasrec", "gru4rec")


def decay_weights(future: int, gamma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    r"""Per-position weights :math:`w_k = e^{-\gamma k}`, ``k = 0..F`` (shape ``(F+1,)``)."""
    return torch.exp(-gamma * torch.arange(future + 1, dtype=torch.float32, device=device))


def guiding_loss(z_past: torch.Tensor, z_future: torch.Tensor, mask: torch.Tensor,
                 gamma: float) -> torch.Tensor:
    r"""Oracle-guiding loss: decayed KL(future || past) over hidden dimensions, summed.

    .. math:: L_{og} = \sum_b \sum_{k=0}^{F} m_{b,k}\, e^{-\gamma k}\,
              \mathrm{KL}\left(q_{b,k} \,\Vert\, p_b\right), \quad
              q_{b,k} = \mathrm{softmax}_d(z^{f}_{b,k}),\; p_b = \mathrm{softmax}_d(z^{p}_b)

    The softmax runs over the d hidden dimensions, not over items; the sum is not averaged.

    Parameters
    ----------
    z_past : torch.Tensor
        ``(B, d)`` past representations.
    z_future : torch.Tensor
        ``(B, F+1, d)`` future hidden states (detach them for the past phase).
    mask : torch.Tensor
        ``(B, F+1)`` 1 where the future target is not padding.
    gamma : float
        Distance decay.

    """
    log_p = F.log_softmax(z_past, dim=-1)[:, None, :]
    log_q = F.log_softmax(z_future, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (B, F+1)
    w = decay_weights(z_future.shape[1] - 1, gamma, z_future.device)
    return (kl * mask.to(kl.dtype) * w[None, :]).sum()


def make_body(backbone: str, dim: int, heads: int, layers: int, dropout: float, max_len: int,
              filter_layers: int, ratio: float) -> nn.Module:
    """An encoder body of ``backbone`` (``sasrec`` or ``gru4rec``)."""
    if backbone == "sasrec":
        return SASRecBody(dim, heads, layers, dropout, max_len, filter_layers, ratio)
    if backbone == "gru4rec":
        return GRU4RecBody(dim, layers, dropout, max_len, filter_layers, ratio)
    raise ValueError(f"backbone '{backbone}' is unknown; use one of {BACKBONES}")


class Oracle4Rec(SequentialRecommender):
    """Past and future encoders over one shared embedding; inference with the past one only.

    Parameters
    ----------
    n_items : int
        Catalogue size.
    backbone : {"sasrec", "gru4rec"}
        Encoder architecture of both encoders.
    max_len, dim, heads, layers : int
        Sequence length L, hidden size, attention heads (SASRec), blocks/GRU layers.
    dropout : float
        Hidden dropout.
    filter_layers : int
        Low-pass filter layers N_f in each encoder.
    ratio : float
        Filter quantile.
    future : int
        F, the future items the future encoder reads.
    alpha, gamma : float
        Weight of the guiding loss and its distance decay.

    """

    def __init__(self, n_items: int, backbone: str = "sasrec", max_len: int = 50, dim: int = 64,
                 heads: int = 2, layers: int = 2, dropout: float = 0.2, filter_layers: int = 1,
                 ratio: float = 0.75, future: int = 10, alpha: float = 0.01, gamma: float = 0.2
                 ) -> None:
        super().__init__()
        self.backbone, self.future_len, self.alpha, self.gamma = backbone, future, alpha, gamma
        self.embedding = SeqEmbedding(n_items, max_len, dim, positions=backbone == "sasrec")
        args = (backbone, dim, heads, layers, dropout, max_len, filter_layers, ratio)
        self.past = make_body(*args)
        self.future = make_body(*args)
        self.apply(init_weights)
        with torch.no_grad():
            self.embedding.item.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Past-encoder hidden states (the only encoder used at inference)."""
        return self.past(self.embedding(seq), seq)

    def future_forward(self, seq: torch.Tensor, targets: torch.Tensor, neg: torch.Tensor,
                       kind: str = "ce") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Future loss over non-padding targets, the last F+1 hidden states and their mask.

        Returns
        -------
        (loss, z_future, mask)
            ``z_future`` is ``(B, F+1, d)``; ``mask`` is ``(B, F+1)`` (target is not padding).

        """
        h = self.future(self.embedding(seq), seq)
        loss = rec_loss(h, self.embedding.item.weight, targets, neg, kind)
        tail = self.future_len + 1
        return loss, h[:, -tail:], (targets[:, -tail:] > 0)

    def future_states(self, seq: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last F+1 future hidden states and their mask: :meth:`future_forward` without loss.

        The past phase needs only these; the full-softmax loss is a large part of the cost.
        """
        tail = self.future_len + 1
        return self.future(self.embedding(seq), seq)[:, -tail:], (targets[:, -tail:] > 0)

    def past_objective(self, seq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                       z_future: torch.Tensor, mask: torch.Tensor, kind: str = "ce"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Past loss :math:`L^{past}_{rec} + \alpha L_{og}` and :math:`L_{og}` (for logging)."""
        z = self.represent(seq)
        og = guiding_loss(z, z_future.detach(), mask, self.gamma)
        return rec_loss(z, self.embedding.item.weight, pos, neg, kind) + self.alpha * og, og


def oracle_optimizers(model: Oracle4Rec, lr: float, weight_decay: float = 0.0
                      ) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """(future, past) Adam optimisers; both hold the one shared embedding (oracle4rec.md §6.1)."""
    shared = list(model.embedding.parameters())
    fut = torch.optim.Adam(shared + list(model.future.parameters()), lr=lr,
                           weight_decay=weight_decay)
    past = torch.optim.Adam(shared + list(model.past.parameters()), lr=lr,
                            weight_decay=weight_decay)
    return fut, past
