"""Ctrl-C: one way to install a SIGINT handler for a block and put the previous one back."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def sigint_handler(handler):
    """Call `handler(signum, frame)` on SIGINT inside the block, then restore the previous
    handler. Nothing changes where SIGINT is ignored (a background job keeps ignoring it) or
    off the main thread (where Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
