"""Stop signals and teardown by PID: what every command that starts processes uses to end them.

SIGTERM and SIGHUP are turned into :class:`Interrupted` (a ``KeyboardInterrupt``, like SIGINT)
by :func:`handle_signals`, so the same teardown runs on every way a user stops a command, and
:func:`signals_deferred` holds further signals back until it ends. :func:`stop_process_tree`
stops a process we started and its descendants, and with ``session`` every other process of
its session, orphans included (a process started with ``start_new_session=True``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM or SIGHUP) arrived; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted`.

    Only the main thread can install handlers; elsewhere the block changes nothing.
    """
    if not threading_main():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def threading_main() -> bool:
    """Whether this is the main thread (where signal handlers and masks apply)."""
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold stop signals back while the block runs (a teardown that must not be cut short).

    A stop signal that arrives meanwhile is noted and raised again, to the handler in place
    before, once the block has ended.
    """
    if not threading_main():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
                for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


def terminate(procs: list, grace_s: float = 10.0) -> None:
    """SIGTERM ``procs`` (psutil processes we started), then SIGKILL those left after grace."""
    import psutil

    if not procs:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def session_processes(sid: int) -> list:
    """Live processes of session ``sid`` (psutil), orphans whose parent already exited included."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and os.getsid(p.pid) == sid:
                found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


def stop_process_tree(pid: int, grace_s: float = 10.0, session: bool = False) -> None:
    """Terminate a process we started and all its descendants (by PID).

    With ``session`` (``pid`` was started with ``start_new_session=True``, so it leads a session
    of its own) every other process of that session is stopped too, until none is left.
    """
    import psutil

    with signals_deferred():
        try:
            root = psutil.Process(pid)
            terminate([root, *root.children(recursive=True)], grace_s)
        except psutil.NoSuchProcess:
            pass
        for _ in range(5) if session else ():
            left = session_processes(pid)
            if not left:
                break
            terminate([*left, *(c for p in left for c in _children(p))], grace_s)


def _children(proc: Any) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []
