"""Resident memory of this process while one run lasts (``rss_peak_mb``, ``rss_growth_mb``)."""

from __future__ import annotations

import threading


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class RssMonitor:
    """Resident memory of this process while one run lasts, sampled in a thread.

    ``rss_peak_mb`` is the largest resident set seen during the run (samples every
    ``every_s`` seconds and at each :meth:`fields` call); ``rss_growth_mb`` is that peak minus
    the resident set when the run started, i.e. what the run added on top of what the process
    already held. Neither is the process's lifetime high-water mark (``ru_maxrss``), which
    earlier runs in the same process would inflate.
    """

    def __init__(self, every_s: float = 0.05) -> None:
        self.start_mb = _rss_mb()
        self.peak_mb = self.start_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every_s,), daemon=True,
                                        name="florec-rss")
        self._thread.start()

    def _sample(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def fields(self) -> dict[str, float]:
        """``{"rss_peak_mb", "rss_growth_mb"}`` of the run so far."""
        self.peak_mb = max(self.peak_mb, _rss_mb())
        return {"rss_peak_mb": round(self.peak_mb, 1),
                "rss_growth_mb": round(self.peak_mb - self.start_mb, 1)}

    def stop(self) -> None:
        """End the sampling thread."""
        self._stop.set()

    def __enter__(self) -> RssMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
