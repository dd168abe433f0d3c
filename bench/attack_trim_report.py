r"""Tables of the trimmed-mean probe files (ML-1M, issue 18).

Reads the JSON-lines files that ``bench/attack_trim_probe.py`` writes under
``docs/results/attacks_ml1m_trim_probe/`` (one per probed run: a ``config`` line, one line per
round, a ``run`` line) and prints Markdown: per file, both rules on the same uploads round by
round (:func:`file_table`); per cell probed along both trajectories (``<cell>-follow-trim`` and
``<cell>-follow-sum``), the docs table (:func:`summary_table`, :func:`clean_table` for the clean
cell ``none-*``) and the two runs side by side (:func:`trajectories`). Cheap: reads the files
only (no data, no model).

Usage (from the repository root; ``bench/attack_trim_probe.py --report`` prints the same)::

    .venv/bin/python bench/attack_trim_report.py
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path("docs/results/attacks_ml1m_trim_probe")
#: the rounds of the docs tables
ROUNDS = (1, 2, 3, 5, 10, 15, 20)
#: the rounds over which the docs compare the target score's fall (both runs past their peak)
FALL = (5, 20)


def read(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All lines of a probe file and its per-round lines."""
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return lines, [r for r in lines if "round" in r and "kind" not in r]


def probed_cells(out: Path) -> Iterator[tuple[str, Path, Path]]:
    """``(cell, trim file, sum file)`` of each cell under ``out`` probed along both runs."""
    for trim_path in sorted(out.glob("*-follow-trim.jsonl")):
        cell = trim_path.name.replace("-follow-trim.jsonl", "")
        sum_path = out / f"{cell}-follow-sum.jsonl"
        if sum_path.exists():
            yield cell, trim_path, sum_path


def target_mean(line: dict[str, Any], key: str) -> float:
    """Mean of ``key`` over a round's targets that carry it (nan if none does)."""
    vals = [x[key] for x in line["targets"] if x.get(key) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _kept(line: dict[str, Any]) -> str:
    kept = target_mean(line, "attackers_kept")
    return "-" if np.isnan(kept) else f"{kept:.2f}"


def file_table(path: Path) -> list[str]:
    """One probe file round by round: both rules on the same uploads (means over the targets).

    Per round: attackers uploading, ``c_i``, ``floor(beta c_i)``, the share of the attackers'
    values the trimmed mean keeps, the targets' score step under the sum (split into the
    attackers' and the benign users' parts) and the trimmed mean, the targets' bias change,
    the other rows' change norm (trim / sum), the score step of the probed users' 10th-best
    item, and one step ahead their target margin, ER@10 and validation ndcg@10; then the
    range of ``c_i`` over the targets and rounds (all users, benign users), the run's own
    validation curve and test metrics.
    """
    lines, rounds = read(path)
    head = lines[0]
    out = [f"### `{path.name}` ({head['config']['attack']}, "
           f"{head['config']['attack-fraction']:.1%}, seed {head['config']['seed']}, "
           f"run follows {head.get('follow', 'trim')}, "
           f"{head['probe_users']} probed users)", "",
           "| round | attackers | c_i | trimmed/end | attackers kept "
           "| target step sum (att + benign) | target step trim | target bias sum / trim "
           "| other rows norm trim/sum | 10th-item step sum / trim "
           "| margin sum / trim | ER@10 sum / trim | valid ndcg@10 sum / trim |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        a, k = r["ahead"], r["kth_item_score_step"]

        def m(key: str, r: dict[str, Any] = r) -> float:
            return target_mean(r, key)

        out.append(
            f"| {r['round']} | {r['attackers_uploading']} | {m('c'):.1f} | "
            f"{m('trimmed_each_end'):.1f} | {_kept(r)} | {m('score_step_sum'):+.3f} "
            f"({m('score_step_sum_attackers'):+.3f} {m('score_step_sum_benign'):+.3f}) | "
            f"{m('score_step_trim'):+.3f} | {m('bias_sum'):+.3f} / {m('bias_trim'):+.3f} | "
            f"{r['others_norm_trim_over_sum']:.3f} | "
            f"{k['sum']:+.4f} / {k['trim']:+.4f} | "
            f"{a['sum']['margin']:+.3f} / {a['trim']['margin']:+.3f} | "
            f"{a['sum']['er@10']:.3f} / {a['trim']['er@10']:.3f} | "
            f"{a['sum']['valid_ndcg@10']:.4f} / {a['trim']['valid_ndcg@10']:.4f} |")
    c = np.array([[t["c"] for t in r["targets"]] for r in rounds])
    benign = c - np.array([[t["malicious"] for t in r["targets"]] for r in rounds])
    out += ["", f"Users changing a target row a round: {c.min()}-{c.max()} "
            f"(mean {c.mean():.1f}), of them benign {benign.min()}-{benign.max()} "
            f"(mean {benign.mean():.1f})"]
    run = next((r for r in lines if r.get("kind") == "run"), None)
    if run:
        out += ["", "Run's own validation (all benign users): " + ", ".join(
            f"r{c['round']} ER@10 {c['er@10']:.3f} ndcg@10 {c['ndcg@10']:.4f}"
            for c in run["curve"]) + f"; test ER@10 {run['metrics'].get('er@10', 0):.3f}, "
            f"ndcg@10 {run['metrics']['ndcg@10']:.4f}"]
    return out


def report(out: Path) -> str:
    """Markdown tables of every probe file under ``out`` (means over the targets)."""
    lines = []
    for path in sorted(out.glob("*.jsonl")):
        lines += [*file_table(path), ""]
    for cell, _, _ in probed_cells(out):
        table = clean_table(out, cell) if cell.startswith("none-") else summary_table(out, cell)
        lines += [f"### `{cell}`: summary (docs/attacks.md)", "", *table, ""]
    return "\n".join(lines + trajectories(out))


def trajectories(out: Path) -> list[str]:
    """Per round, the followed rule's probed-user numbers of a cell's two runs side by side.

    For a cell probed twice (``-follow-trim`` and ``-follow-sum``): the mean target score,
    the same before the users' refit (the item table's part of the change), the mean
    10th-best score and ER@10 of the probed users after each round of each trajectory, the
    targets' mean bias and the norm of the other rows' aggregated change; then the target
    score's fall a round over ``FALL`` in both runs (:func:`fall`; when both reach it).
    """
    lines: list[str] = []
    for cell, trim_path, sum_path in probed_cells(out):
        runs = {"trim": read(trim_path)[1], "sum": read(sum_path)[1]}
        lines += [f"### `{cell}`: the trimmed-mean run vs the undefended (sum) run", "",
                  "| round | target score trim / sum | before refit trim / sum "
                  "| 10th-best trim / sum | ER@10 trim / sum | target bias trim / sum "
                  "| other rows' change norm trim / sum |",
                  "|---|---|---|---|---|---|---|"]
        for t, s in zip(runs["trim"], runs["sum"], strict=False):
            a = {"trim": t["ahead"]["trim"], "sum": s["ahead"]["sum"]}
            lines.append(
                f"| {t['round']} | {a['trim']['target_score']:.2f} / "
                f"{a['sum']['target_score']:.2f} | "
                f"{a['trim'].get('target_score_before_refit', float('nan')):.2f} / "
                f"{a['sum'].get('target_score_before_refit', float('nan')):.2f} | "
                f"{a['trim']['kth_score']:.2f} / {a['sum']['kth_score']:.2f} | "
                f"{a['trim']['er@10']:.3f} / {a['sum']['er@10']:.3f} | "
                f"{a['trim']['target_bias']:.1f} / {a['sum']['target_bias']:.1f} | "
                f"{t['others_norm']['trim']:.2f} / {s['others_norm']['sum']:.2f} |")
        lines.append("")
        if set(FALL) <= {r["round"] for r in runs["trim"]} & {r["round"] for r in runs["sum"]}:
            lines += [f"Target score fall, rounds {FALL[0]}-{FALL[1]} (both runs): "
                      + " / ".join(f"{v:.2f}" for v in fall(out, cell).values())
                      + " points a round (trim / sum)", ""]
    return lines


def fall(out: Path, cell: str, span: tuple[int, int] = FALL) -> dict[str, float]:
    r"""The probed users' mean target score lost per round over ``span``, in each run.

    ``(s_a - s_b) / (b - a)`` for ``span = (a, b)``, ``s_r`` the mean target score after round
    ``r`` under the rule the run follows (``ahead[rule]['target_score']``), over the same
    rounds in the trimmed-mean run and the sum run.

    Parameters
    ----------
    out : Path
        Folder of the probe files.
    cell : str
        A cell probed along both runs (``<cell>-follow-trim`` and ``<cell>-follow-sum``).
    span : (int, int)
        First and last round.

    Returns
    -------
    dict
        ``{'trim': fall, 'sum': fall}`` in score points a round.

    """
    first, last = span
    rates = {}
    for rule in ("trim", "sum"):
        score = {r["round"]: r["ahead"][rule]["target_score"]
                 for r in read(out / f"{cell}-follow-{rule}.jsonl")[1]}
        rates[rule] = (score[first] - score[last]) / (last - first)
    return rates


def _paired_rounds(out: Path, cell: str, rounds: Iterable[int]
                   ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The listed rounds' lines of ``cell``'s trimmed-mean run and sum run, side by side."""
    keep = set(rounds)
    runs = {rule: read(out / f"{cell}-follow-{rule}.jsonl")[1] for rule in ("trim", "sum")}
    for t, s in zip(runs["trim"], runs["sum"], strict=False):
        if t["round"] in keep:
            yield t, s


def summary_table(out: Path, cell: str, rounds: Iterable[int] = ROUNDS) -> list[str]:
    """The docs table of one cell probed along both trajectories (means over the targets).

    Per listed round: attackers uploading, ``c_i`` and ``floor(beta c_i)``, the share of the
    attackers' values the trimmed mean keeps, the attackers' push on the targets' mean score
    within the sum (``u_bar . sum dV + sum db`` over their rows), the targets' bias, the
    probed users' ER@10 after the round (the run's own rule) in the trimmed-mean run and the
    sum run; then, in the sum run, what the trimmed mean would have done with the same uploads:
    the targets' mean score one step ahead (trim minus sum) and the other rows' change norm
    (trim / sum).
    """
    lines = ["| round | attackers | c_i / cut each end | attackers' values kept "
             "| attackers' push trim run / sum run | target bias trim run / sum run "
             "| ER@10 trim run / sum run | same uploads: target score trim - sum "
             "| same uploads: other rows' change trim / sum |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t, s in _paired_rounds(out, cell, rounds):
        m = target_mean
        lines.append(
            f"| {t['round']} | {t['attackers_uploading']} | {m(t, 'c'):.1f} / "
            f"{m(t, 'trimmed_each_end'):.1f} | {_kept(t)} | "
            f"{m(t, 'score_step_sum_attackers'):+.2f} / {m(s, 'score_step_sum_attackers'):+.2f}"
            f" | {t['ahead']['trim']['target_bias']:.1f} / {s['ahead']['sum']['target_bias']:.1f}"
            f" | {t['ahead']['trim']['er@10']:.3f} / {s['ahead']['sum']['er@10']:.3f} | "
            f"{s['ahead']['trim']['target_score'] - s['ahead']['sum']['target_score']:+.2f} | "
            f"{s['others_norm_trim_over_sum']:.2f} |")
    return lines


def clean_table(out: Path, cell: str = "none-f0-s0", rounds: Iterable[int] = ROUNDS
                ) -> list[str]:
    """The docs table of the clean cell along both trajectories.

    Per listed round: the norm of the non-target rows' (emb, bias) aggregated change in each
    run (the rule's output, before the server optimiser's FedAvgM step, not the step applied
    to the table), the probed users' validation ndcg@10 after the round in each run and, in
    the sum run, the trimmed mean's one-step counterfactual on the same uploads (change norm
    trim / sum, ndcg@10 trim minus sum).
    """
    lines = ["| round | non-target change norm trim run / sum run "
             "| valid ndcg@10 trim run / sum run | same uploads: change norm trim / sum "
             "| same uploads: ndcg@10 trim - sum |",
             "|---|---|---|---|---|"]
    for t, s in _paired_rounds(out, cell, rounds):
        nd = {"trim": t["ahead"]["trim"]["valid_ndcg@10"],
              "sum": s["ahead"]["sum"]["valid_ndcg@10"]}
        lines.append(
            f"| {t['round']} | {t['others_norm']['trim']:.2f} / {s['others_norm']['sum']:.2f}"
            f" | {nd['trim']:.4f} / {nd['sum']:.4f} | {s['others_norm_trim_over_sum']:.2f} | "
            f"{s['ahead']['trim']['valid_ndcg@10'] - nd['sum']:+.4f} |")
    return lines


def main() -> None:
    """Print the report of the probe files under ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the probe files")
    print(report(parser.parse_args().out))


if __name__ == "__main__":
    main()
