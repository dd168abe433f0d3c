r"""AgentCF training throughput: one step's LLM calls batched across users vs one at a time.

Each training step holds one interaction of every user; its four LLM phases (decide, user
reflection, fusion, item reflection) each go to the LLM as one list of all users' prompts
(:func:`florec.models.agentcf.agents.user_side_step`), which the layer answers in batches of
``batch_size`` prompts of similar length. ``--batch-sizes 1,16`` runs the same training
(same users, steps, prompts and per-call seeds; empty cache) with each batch size, side by side,
and writes ``<out>/throughput.json``: prompts, wall and CPU seconds (``time.process_time``,
which the other processes on a shared box do not inflate), prompts per CPU second, and an
extrapolation to the issue's budget (all training interactions of ``--budget-users`` sampled
users at the measured CPU rate, on two free cores: two single-threaded node processes).
Run (one thread; on a shared box the wall seconds are noisy, the CPU seconds much less)::

    OMP_NUM_THREADS=1 nice -n 19 python bench/agentcf_throughput.py --dataset ml-100k \
        --users 4 --train-max 1 --max-tokens 32 --batch-sizes 16,1 \
        --out docs/results/agentcf-throughput/users4

(the committed results: that, and ``--users 16`` with ``--batch-sizes 16`` and ``1`` run
separately into ``users16`` and ``users16-b1``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def measure(config: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Train the agents once with ``batch_size``; seconds and prompts per phase."""
    from florec.models.agentcf.agents import training_steps
    from florec.models.agentcf.memory import ItemMemories, UserMemory
    from florec.models.agentcf.pipeline import load_domain_data, settings_of, train_agents
    from florec.models.llm.config import LLMConfig
    from florec.models.llm.factory import build_llm
    from florec.recdata.runconfig import parse_run_config

    cfg = parse_run_config(config)
    data = load_domain_data(cfg)
    llm = build_llm(LLMConfig.from_run_config(cfg, batch_size=batch_size, cache=False,
                                              progress=False))
    settings = settings_of(cfg)
    memories = {int(u): UserMemory(settings.dual) for u in data.users}
    steps = training_steps(data.train, data.users.tolist(), cfg.agentcf_train_max)
    t0, c0 = time.perf_counter(), time.process_time()
    stats = train_agents(llm, data, memories, ItemMemories(data.item_text), settings,
                         cfg.agentcf_train_max)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    calls = llm.stats.as_dict()
    n = max(stats["interactions"], 1)
    return {"batch_size": batch_size, "users": len(data.users), "steps": len(steps),
            "interactions": stats["interactions"], "seconds": seconds, "cpu_seconds": cpu,
            "llm": calls, "prompts_per_s": calls["llm_calls"] / seconds,
            "prompts_per_cpu_s": calls["llm_calls"] / cpu,
            "seconds_per_interaction": seconds / n, "cpu_seconds_per_interaction": cpu / n}


def budget_interactions(config: dict[str, Any], users: int) -> int:
    """Training interactions of ``users`` sampled users (the full run, no ``train-max``)."""
    from florec.models.agentcf.pipeline import load_domain_data
    from florec.recdata.runconfig import parse_run_config

    data = load_domain_data(parse_run_config(config | {"agentcf-users": users}))
    return sum(len(v) for v in data.train.values())


def main() -> None:
    """Parse the arguments, measure each batch size, write ``throughput.json``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--model", default="agentcf++", choices=["agentcf", "agentcf++"])
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--train-max", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--budget-users", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("results/agentcf-throughput"))
    args = ap.parse_args()
    config = {"model": args.model, "dataset": args.dataset, "llm-backend": "hf",
              "agentcf-users": args.users, "agentcf-train-max": args.train_max,
              "agentcf-max-tokens": args.max_tokens, "llm-cache": False}
    rows = [measure(config, int(b)) for b in args.batch_sizes.split(",")]
    total = budget_interactions(config, args.budget_users)
    for row in rows:  # wall: at this run's share of the box; cpu / 2: two free cores
        row["budget_minutes"] = total * row["seconds_per_interaction"] / 60
        row["budget_minutes_2_free_cores"] = total * row["cpu_seconds_per_interaction"] / 120
    out = {"config": config, "budget_users": args.budget_users,
           "budget_interactions": total, "rows": rows,
           "note": "2 CPU cores shared by 8 engineers, OMP_NUM_THREADS=1, nice 19; empty cache"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    for row in rows:
        print(f"batch {row['batch_size']:>3}: {row['llm']['llm_calls']} prompts in "
              f"{row['seconds']:.0f} s wall, {row['cpu_seconds']:.0f} CPU s "
              f"({row['prompts_per_cpu_s']:.3f} prompts per CPU s, "
              f"{row['cpu_seconds_per_interaction']:.1f} CPU s per interaction); "
              f"{args.budget_users} users ({total} interactions) on 2 free cores: "
              f"{row['budget_minutes_2_free_cores']:.0f} min")


if __name__ == "__main__":
    main()
