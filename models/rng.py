"""Seeded weight initialisation that leaves every global torch RNG as it found it.

``torch.manual_seed`` seeds the CPU generator *and* every accelerator's (CUDA's lazily, when it
is first used), and ``torch.random.fork_rng(devices=[])`` restores the CPU one only: a seeded
init inside it reseeds CUDA for the rest of the process (the dropout of a model trained after
it, on every node alike). :func:`cpu_seeded` seeds the CPU generator alone, inside a fork of the
CPU and of every CUDA device already in use, so nothing outside the block sees the seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _cuda_in_use() -> list[int]:
    """CUDA devices whose generators may be drawn from (none before CUDA is initialised)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


@contextmanager
def cpu_seeded(seed: int) -> Iterator[None]:
    """Run the block with the CPU generator seeded by ``seed``; restore every generator after.

    The draws inside equal those after ``torch.manual_seed(seed)`` for weights built on the CPU
    (``nn.Module`` constructors, PEFT's LoRA init), so seeded weights are unchanged; no CUDA
    generator is seeded, and those in use are restored too (a CUDA draw inside stays private).
    """
    with torch.random.fork_rng(devices=_cuda_in_use()):
        torch.default_generator.manual_seed(int(seed))
        yield


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator, and CUDA's only where CUDA exists.

    Only the CPU and CUDA generators are seeded: unlike ``torch.manual_seed``, MPS, XPU, MTIA
    and custom-backend generators are left as they are, so draws on those devices differ. On CPU
    and CUDA the draws that follow equal those after ``torch.manual_seed(seed)``, but on a
    machine without CUDA it skips the lazily queued CUDA seeding that ``torch.manual_seed``
    records with a formatted stack trace on every call (17% of the profiled time of a FedCIA
    round of 100 clients, which seed once per client, under cProfile, which inflates such
    Python-heavy calls: ``docs/results/perf/profiles/round.fedcia-mf.txt``; the wall-clock
    round/epoch ratio did not move beyond the noise, 3.54x -> 3.70x at another load).
    """
    torch.default_generator.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))
