"""The attack bench's figures, drawn from its pooled cells (``bench/attacks.py``'s ``report``).

``attacks.png``: FedRecAttack against the defenses (ER@10 and ndcg@10 over the malicious share,
and seed 0's validation ER@10 per round at 1%). ``attacks_grid.png``: every FedAvg-MF attack
of the grid, one column per defense, ER@10 (top) and ndcg@10 (bottom) over the malicious share,
mean ± sample sd over the seeds of each cell, the clean run as a dashed line.

The argument ``by`` maps ``(method, attack, fraction, defense)`` to the cell summaries of the
seeds run (each with ``metrics`` and ``curve``).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

Cells = dict[tuple, list[dict[str, Any]]]
DEFENSE_ORDER = ("none", "norm-bound", "trimmed-mean", "median", "krum", "multi-krum")


def mean_metric(runs: list[dict[str, Any]], key: str) -> float:
    """Mean of a test metric over the seeds' runs."""
    return statistics.mean(r["metrics"][key] for r in runs)


def sd_metric(runs: list[dict[str, Any]], key: str) -> float:
    """Sample standard deviation of a test metric over the seeds' runs (0 for one seed)."""
    values = [r["metrics"][key] for r in runs]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ordered_defenses(defenses: set[str]) -> list[str]:
    """Defenses in the tables' column order (unknown ones last, by name)."""
    return sorted(defenses, key=lambda d: (DEFENSE_ORDER.index(d) if d in DEFENSE_ORDER
                                           else len(DEFENSE_ORDER), d))


def plot_fedrecattack(by: Cells, path: Path) -> None:
    """FedRecAttack vs the defenses: ER@10 and ndcg@10 by share, and the 1% curve (seed 0)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    fedavg = {k[1:]: v for k, v in by.items() if k[0] == "FedAvg-MF"}
    defenses = sorted({d for (a, _, d) in fedavg if a == "fedrecattack"})
    for defense in defenses:
        pts = sorted((f, runs) for (a, f, d), runs in fedavg.items()
                     if a == "fedrecattack" and d == defense)
        if not pts:
            continue
        xs = [100 * f for f, _ in pts]
        axes[0].plot(xs, [mean_metric(r, "er@10") for _, r in pts], "o-", label=defense)
        axes[1].plot(xs, [mean_metric(r, "ndcg@10") for _, r in pts], "o-", label=defense)
        one = fedavg.get(("fedrecattack", 0.01, defense))
        if one:
            curve = one[0]["curve"]
            axes[2].plot([c["round"] for c in curve], [c["er@10"] for c in curve], "o-",
                         label=defense)
    for d, runs in fedavg.items():
        if d[0] == "none" and d[2] == "none":
            axes[1].axhline(mean_metric(runs, "ndcg@10"), color="grey", ls="--", label="no attack")
    axes[0].set(xlabel="malicious users (%)", ylabel="test ER@10 of the targets",
                title="FedRecAttack vs defenses")
    axes[1].set(xlabel="malicious users (%)", ylabel="test ndcg@10", title="accuracy")
    axes[2].set(xlabel="round", ylabel="validation-time ER@10", title="FedRecAttack, 1%")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_attack_grid(by: Cells, path: Path) -> bool:
    """Every FedAvg-MF attack x defense over the malicious share; False when there is none.

    Only (attack, defense) pairs run at two or more shares are drawn (a single point is in the
    tables).
    """
    fedavg = {k[1:]: v for k, v in by.items() if k[0] == "FedAvg-MF"}
    shares = {(a, d): sorted(f for (b, f, e) in fedavg if (b, e) == (a, d))
              for (a, _, d) in fedavg if a != "none"}
    drawn = {k for k, v in shares.items() if len(v) > 1}
    attacks = sorted({a for a, _ in drawn})
    defenses = ordered_defenses({d for _, d in drawn})
    if not drawn:
        return False
    ticks = sorted({100 * f for k in drawn for f in shares[k]})
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(defenses), figsize=(3.6 * len(defenses), 6.4),
                             sharex=True, sharey="row", squeeze=False)
    for col, defense in enumerate(defenses):
        for attack in attacks:
            if (attack, defense) not in drawn:
                continue
            pts = sorted((f, runs) for (a, f, d), runs in fedavg.items()
                         if a == attack and d == defense)
            xs = [100 * f for f, _ in pts]
            for row, key in enumerate(("er@10", "ndcg@10")):
                axes[row][col].errorbar(xs, [mean_metric(r, key) for _, r in pts],
                                        yerr=[sd_metric(r, key) for _, r in pts], fmt="o-",
                                        capsize=2, label=attack,
                                        color=f"C{attacks.index(attack)}")
        clean = fedavg.get(("none", 0.0, defense))
        if clean:
            axes[1][col].axhline(mean_metric(clean, "ndcg@10"), color="grey", ls="--",
                                 label="no attack")
        axes[0][col].set(title=f"defense: {defense}")
        axes[1][col].set(xlabel="malicious users (%)")
        axes[0][col].set_xscale("log")
        axes[1][col].set_xticks(ticks, [f"{t:g}" for t in ticks])
        axes[1][col].minorticks_off()
    axes[0][0].set(ylabel="test ER@10 of the targets")
    axes[1][0].set(ylabel="test ndcg@10")
    legend = {lab: h for ax in axes[1] for h, lab in zip(*ax.get_legend_handles_labels(),
                                                          strict=True)}
    fig.legend(legend.values(), legend.keys(), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.89, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True
