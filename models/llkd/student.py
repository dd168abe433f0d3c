"""The LLKD student: frozen sentence embeddings (MiniLM) and a linear head, plus its metrics."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class LinearStudent(nn.Module):
    """``p_S(c|x) = softmax(W e(x) + b)_c`` over frozen, unit-norm embeddings ``e(x)``.

    Parameters
    ----------
    dim : int
        Embedding width (384 for MiniLM).
    n_classes : int
        Number of classes.
    seed : int
        Seed of the head's initialisation.

    """

    def __init__(self, dim: int, n_classes: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(dim, n_classes)
        with torch.no_grad():
            bound = 1.0 / np.sqrt(dim)
            self.head.weight.uniform_(-bound, bound, generator=gen)
            self.head.bias.zero_()

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)``."""
        return self.head(emb)

    @torch.no_grad()
    def proba(self, emb: np.ndarray) -> np.ndarray:
        """``p_S`` in eval mode without gradient (the spec's rule for ``u_S``)."""
        was = self.training
        self.eval()
        out = torch.softmax(self(torch.as_tensor(emb, dtype=torch.float32)), 1).numpy()
        self.train(was)
        return out.astype(np.float64)

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """Predicted class of every row."""
        return self.proba(emb).argmax(1)

    def state(self) -> dict[str, np.ndarray]:
        """Weights as float32 arrays (what a federated node uploads)."""
        return {k: v.detach().cpu().numpy().astype(np.float32)
                for k, v in self.state_dict().items()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Set the weights from :meth:`state` (e.g. the FedAvg mean)."""
        self.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})


def accuracy_macro_f1(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 of ``pred`` against ``gold``.

    ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)`` (0 when the class is neither predicted nor
    present), ``macro-F1 = (1/C) sum_c F1_c`` over all ``C`` classes.
    """
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = np.bincount(gold[pred == gold], minlength=n_classes).astype(np.float64)
    fp = np.bincount(pred[pred != gold], minlength=n_classes)
    fn = np.bincount(gold[pred != gold], minlength=n_classes)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(n_classes), where=denom > 0)
    return {"accuracy": float((pred == gold).mean()) if len(gold) else float("nan"),
            "macro-f1": float(f1.mean())}
