"""CoT-Rec's trained stages in the stage cache: the retriever's best epoch and the LoRA adapter.

With a full LLM call cache a central rerun still retrained SASRec and the ranker's adapter
(~18 of its minutes on ML-100K); :class:`florec.models.stage_cache.StageCache` stores both.

* **Retriever** (:func:`retriever_key`): the split's folder name (source content hash, split
  kind and seed), digests of every array SASRec trains and is selected on (train windows,
  validation/test inputs, masks and targets), of the initial item rows and user tokens, every
  training knob (:data:`RETRIEVER_KNOBS`, epoch cap, batch size), the device and torch's
  version, and the sha256 of the source of the modules that train it
  (:data:`RETRIEVER_CODE`). The entry holds the best-epoch state dict, the run entry and
  per-epoch rows (so a hit reports the same metrics, seconds and memory fields and writes the
  same ``rounds.jsonl`` lines), and the torch RNG state after training (the CPU generator's,
  and every CUDA device's where CUDA is initialised): a hit restores it, so everything
  downstream (the LoRA adapter's random ``A`` init draws from it) is what a trained run
  would have done.
* **Adapter** (:func:`adapter_key`): the LLM's key (backend, model, its file sha256, dtype),
  its device, the training prompts and targets, the number of letters, the LoRA knobs
  (epochs, lr, rank, batch size, seed), PEFT's target modules, the versions of torch, PEFT and
  transformers, the sha256 of the training code's source (:data:`ADAPTER_CODE`) and the torch
  RNG state (CPU, and CUDA where initialised) the adapter's init draws from. The entry holds
  the adapter arrays and the training statistics.

Federated runs do not use it: a node's adapter is averaged by the server every round, so no
node-side stage is a function of the node's inputs alone.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florec.models.stage_cache import StageCache, StageCacheWarning, array_digest, stage_key
from florec.recdata.runconfig import RunConfig

RETRIEVER = "cotrec-retriever"
ADAPTER = "cotrec-lora"
#: Run-config fields that decide the retriever's training (besides data and initial rows).
RETRIEVER_KNOBS = ("dataset", "dim", "heads", "seq_layers", "dropout", "max_seq_len", "lr",
                   "seed", "eval_every", "selection_metric", "patience", "ks",
                   "cotrec_user_token")
#: Bump when what equal inputs produce changes outside the hashed modules below.
CODE_VERSION = 1
#: Modules whose source enters the retriever's key (SASRec, its CoT-Rec wrapper and epoch,
#: the epoch/selection loop, the central run that drives them).
RETRIEVER_CODE = ("florec.models.sasrec", "florec.models.cotrec.retriever",
                  "florec.sim.central_loop", "florec.sim.central_cotrec")
#: Modules whose source enters the adapter's key (the LoRA training loop and the HF backend).
ADAPTER_CODE = ("florec.models.llm.lora", "florec.models.llm.hf")
_RNG = "__torch_rng_state__"
_CUDA_RNG = "__torch_cuda_rng_state__"


def code_digest(modules: Sequence[str]) -> str:
    """sha256 of the source text of ``modules`` (dotted names), in the order given.

    An edit to any of them changes the digest, so a stage trained by older code misses. A
    module installed without its source (bytecode only) enters by its marshalled code object.
    """
    import importlib
    import inspect
    import marshal

    h = hashlib.sha256()
    for name in modules:
        module = importlib.import_module(name)
        h.update(name.encode())
        try:
            h.update(inspect.getsource(module).encode())
        except (OSError, TypeError):
            h.update(marshal.dumps(module.__loader__.get_code(name)))
    return h.hexdigest()


def rng_states() -> dict[str, np.ndarray]:
    """The torch RNG states to store (array name -> state).

    The CPU generator's and, where CUDA is initialised, every device's (stacked, one row per
    device): what a retriever entry stores and an adapter key hashes.
    """
    states = {_RNG: torch.get_rng_state().numpy()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states[_CUDA_RNG] = np.stack([s.numpy() for s in torch.cuda.get_rng_state_all()])
    return states


def set_rng_states(arrays: dict[str, np.ndarray]) -> None:
    """Restore the states :func:`rng_states` stored (CUDA's only where it was stored)."""
    torch.set_rng_state(torch.from_numpy(np.array(arrays[_RNG])))
    if _CUDA_RNG in arrays:
        torch.cuda.set_rng_state_all([torch.from_numpy(np.array(row))
                                      for row in arrays[_CUDA_RNG]])


def _rng_digest() -> dict[str, str]:
    return {name: array_digest(value) for name, value in rng_states().items()}


def retriever_key(cfg: RunConfig, split_path: Path, data: dict[str, Any],
                  item_rows: np.ndarray | None, user_rows: np.ndarray | None, epochs: int,
                  batch_size: int, device: str) -> str:
    """Stage key of a retriever trained on ``data`` (named arrays, dense or sparse)."""
    return stage_key(RETRIEVER, {
        "split": Path(split_path).name,
        "data": {name: array_digest(value) for name, value in sorted(data.items())},
        "item_init": array_digest(item_rows), "user_init": array_digest(user_rows),
        "knobs": {k: getattr(cfg, k) for k in RETRIEVER_KNOBS},
        "epochs": int(epochs), "batch_size": int(batch_size), "device": str(device),
        "torch": torch.__version__, "code": CODE_VERSION,
        "source": code_digest(RETRIEVER_CODE)})


def adapter_key(llm: Any, prompts: Sequence[str], targets: Sequence[int], n_choices: int,
                knobs: dict[str, Any]) -> str:
    """Stage key of a LoRA adapter that ``llm`` would train on ``prompts`` -> ``targets``."""
    import peft
    import transformers

    from florec.models.llm.lora import TARGET_MODULES

    texts = hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()
    return stage_key(ADAPTER, {
        "model": llm.key, "device": str(getattr(llm, "device", "")), "prompts": texts,
        "targets": [int(t) for t in targets], "n_choices": int(n_choices), "knobs": knobs,
        "modules": list(TARGET_MODULES), "peft": peft.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "rng": _rng_digest(), "code": CODE_VERSION,
        "source": code_digest(ADAPTER_CODE)})


def cached_retriever(stages: StageCache, key: str, model: torch.nn.Module,
                     train: Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]]
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load the retriever stored under ``key`` into ``model``, or ``train()`` and store it.

    ``train`` trains ``model`` in place, leaves the weights the ranker should use in it
    (the best epoch's) and returns the run entry and the per-epoch rows. On a hit the model
    gets the stored weights and the torch RNG state after training is restored; an entry whose
    names or shapes differ from ``model``'s is ignored like a corrupt one.
    """
    found = stages.load(RETRIEVER, key)
    if found is not None:
        arrays, meta = found
        own = model.state_dict()
        if set(arrays) - {_RNG, _CUDA_RNG} == set(own) and all(
                tuple(arrays[k].shape) == tuple(v.shape) for k, v in own.items()):
            model.load_state_dict({k: torch.from_numpy(np.array(arrays[k])).to(v.device)
                                   for k, v in own.items()})
            set_rng_states(arrays)
            return meta["run"], meta["rows"]
        warnings.warn(f"stage cache: the {RETRIEVER} entry {stages.path(RETRIEVER, key)} does "
                      "not fit this model (names or shapes differ); retraining and overwriting "
                      "it", StageCacheWarning, stacklevel=2)
        stages.events[RETRIEVER] = "corrupt"
    run, rows = train()
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    arrays |= rng_states()
    stages.save(RETRIEVER, key, arrays, {"run": run, "rows": rows})
    return run, rows


def cached_finetune(stages: StageCache, llm: Any, prompts: Sequence[str],
                    targets: Sequence[int], n_choices: int, *, epochs: int, lr: float,
                    lora_r: int, batch_size: int, seed: int) -> dict[str, Any]:
    """``llm.finetune_choices`` (same arguments), or the stored adapter loaded into ``llm``.

    Returns the training statistics (on a hit, those of the run that trained the adapter).

    Raises
    ------
    NotImplementedError
        The backend cannot be fine-tuned (e.g. ``scripted``); nothing is looked up.

    """
    knobs = {"epochs": epochs, "lr": lr, "lora_r": lora_r, "batch_size": batch_size,
             "seed": seed}
    if not hasattr(llm, "model"):  # no weights: the backend raises NotImplementedError
        return llm.finetune_choices(prompts, targets, n_choices, **knobs)
    key = adapter_key(llm, prompts, targets, n_choices, knobs)
    found = stages.load(ADAPTER, key)
    if found is not None:
        arrays, meta = found
        llm.load_adapter_state(arrays)
        return meta["train"]
    stats = llm.finetune_choices(prompts, targets, n_choices, **knobs)
    stages.save(ADAPTER, key, llm.adapter_state(), {"train": stats})
    return stats
