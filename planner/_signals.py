"""Ctrl-C: one way to install a SIGINT handler for a block and put the previous one back,
and the command line's handler, which makes an interrupt end quietly wherever it lands."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import warnings


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


@contextlib.contextmanager
def quiet_interrupts():
    """Inside the block, SIGINT raises KeyboardInterrupt after silencing logging and warnings
    for the rest of the process; yields a list that is non-empty once SIGINT came.

    Libraries report from their cleanup while an interrupt unwinds them: transformers logs
    its multi-line load report from a `finally` when Ctrl-C lands in from_pretrained, and
    may raise another error there. The caller prints its one line ("interrupted") from the
    flag, whatever exception arrives."""
    interrupted: list[int] = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        logging.disable(logging.CRITICAL)
        warnings.simplefilter("ignore")
        raise KeyboardInterrupt

    with sigint_handler(on_sigint):
        yield interrupted
