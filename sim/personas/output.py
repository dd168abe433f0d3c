"""What a simulation writes: RecBole atomic files of the sessions, and the report.

Per recommender ``OUT/<label>/``: ``<label>.inter`` (the clicks: ``user_id:token`` the persona,
``item_id:token`` the raw item id, ``timestamp:float`` the session), ``<label>.user`` (the
personas' fields), ``<label>.item`` (title and genres of the items clicked) and
``sessions.jsonl`` (every session: the list shown, the choice and click probabilities, the
decision, the reason, the memories recalled). ``recbole:OUT/<label>`` reads the clicks back as
a dataset. ``OUT/report.json`` and ``OUT/report.md`` hold the metrics of every recommender and
the personas' reasons side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from florec.recdata.item_text import ItemText
from florec.sim.personas.persona import Persona


def summarize(records: list[dict], pop: np.ndarray) -> dict[str, Any]:
    r"""Click-through and novelty of one recommender's sessions.

    ``ctr = clicks / sessions``; ``expected_ctr`` is the mean click probability;
    ``arp_shown = (1/|S|) sum_{s in S} (1/|L_s|) sum_{i in L_s} pop_i`` (average recommendation
    popularity of the lists, ``pop_i`` the item's training interactions; lower = more novel)
    and ``arp_clicked`` the mean ``pop_i`` of clicked items; ``coverage_shown`` the share of the
    catalogue shown at least once.

    Parameters
    ----------
    records : list of dict
        :func:`florec.sim.personas.session.simulate`'s records.
    pop : np.ndarray
        Training interaction count of every item.

    Returns
    -------
    dict
        The metrics (``ctr_by_session`` lists one value per session).

    """
    if not records:
        raise ValueError("no sessions to summarize; simulate at least one persona and session")
    clicked = np.array([r["clicked"] for r in records], bool)
    sessions = np.array([r["session"] for r in records])
    shown = np.array([r["shown"] for r in records])
    picked = np.array([r["considered"] for r in records])
    return {
        "sessions": len(records),
        "clicks": int(clicked.sum()),
        "ctr": float(clicked.mean()),
        "expected_ctr": float(np.mean([r["p_click"] for r in records])),
        "ctr_by_session": [float(clicked[sessions == s].mean()) for s in np.unique(sessions)],
        "arp_shown": float(pop[shown].mean(axis=1).mean()),
        "arp_clicked": float(pop[picked[clicked]].mean()) if clicked.any() else None,
        "coverage_shown": float(len(np.unique(shown)) / len(pop)),
    }


def _token(value: str) -> str:
    return "_".join(str(value).split()) or "_"


def write_recbole(folder: Path, label: str, records: list[dict], personas: list[Persona],
                  texts: list[ItemText], raw_ids: list[str]) -> Path:
    """Write one recommender's sessions as RecBole atomic files into ``folder/label``.

    Returns
    -------
    Path
        The dataset folder (read it back as ``recbole:<folder>``).

    """
    out = Path(folder) / label
    out.mkdir(parents=True, exist_ok=True)
    rows = [f"{r['pid']}\t{raw_ids[r['considered']]}\t{float(r['session']):.1f}"
            for r in records if r["clicked"]]
    (out / f"{label}.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(x + "\n" for x in rows))
    users = [f"{p.pid}\t{_token(p.age_group)}\t{_token(p.gender)}\t{_token(p.income)}\t"
             f"{'' if p.anchor is None else p.anchor}\t{' '.join(_token(g) for g in p.genres)}"
             for p in personas]
    (out / f"{label}.user").write_text(
        "user_id:token\tage:token\tgender:token\tincome:token\tanchor:token\tgenres:token_seq\n"
        + "".join(x + "\n" for x in users))
    items = sorted({r["considered"] for r in records if r["clicked"]})
    lines = [f"{raw_ids[i]}\t{' '.join(texts[i].title.split())}\t"
             f"{' '.join(_token(g) for g in texts[i].genres)}" for i in items]
    (out / f"{label}.item").write_text("item_id:token\ttitle:token_seq\tgenre:token_seq\n"
                                       + "".join(x + "\n" for x in lines))
    with (out / "sessions.jsonl").open("w") as fh:
        for r in records:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    return out


def report_markdown(report: dict[str, Any], texts: list[ItemText], n_reasons: int = 12) -> str:
    """The report as Markdown: one metrics row per recommender, then reasons side by side."""
    runs = report["runs"]
    head = ("| recommender | sessions | clicks | CTR | expected CTR | CTR by session | "
            "ARP shown | ARP clicked | coverage |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {r['label']} | {m['sessions']} | {m['clicks']} | {m['ctr']:.3f} | "
        f"{m['expected_ctr']:.3f} | {', '.join(f'{x:.2f}' for x in m['ctr_by_session'])} | "
        f"{m['arp_shown']:.1f} | "
        f"{'-' if m['arp_clicked'] is None else format(m['arp_clicked'], '.1f')} | "
        f"{m['coverage_shown']:.3f} |\n"
        for r in runs for m in [r["metrics"]])
    labels = [r["label"] for r in runs]
    side = f"| persona | session | {' | '.join(labels)} |\n|---|---|{'---|' * len(labels)}\n"
    by_run = [{(x["pid"], x["session"]): x for x in r["records"]} for r in runs]
    for key in list(by_run[0])[:n_reasons]:
        cells = []
        for table in by_run:
            x = table.get(key)
            if x is None:
                cells.append("-")
                continue
            verb = "clicked" if x["clicked"] else "skipped"
            reason = x["reason"].replace("|", "/")
            cells.append(f"{verb} *{texts[x['considered']].title}*: {reason}")
        side += f"| {key[0]} | {key[1]} | {' | '.join(cells)} |\n"
    setup = report["setup"]
    return (f"# Persona simulation\n\n{setup['personas']} personas x {setup['sessions']} "
            f"sessions, policy `{setup['policy']}`, "
            f"{'closed' if setup['closed_loop'] else 'open'} loop, seed {setup['seed']}.\n\n"
            f"{head}{rows}\n## What the personas said\n\n{side}")
