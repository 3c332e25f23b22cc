"""Leaving a process quickly.

A Python 3.11 process that has loaded torch, diffusers and transformers spends about 3 s in the
interpreter's shutdown after its last line (measured: ``benchmarks/bench_process_exit.py``):
clearing ~4,000 modules, it runs several full garbage collections over millions of objects.
Every ``t2iops`` command, KFP step, DVC stage and torchrun rank paid it.

:func:`collect_once_at_exit` makes the process collect once at exit, so the finalizers of
everything already unreachable run as usual (``__del__``, temp files and folders), then freeze
what is left, which the shutdown's own collections then skip; the modules are still torn down and
every other exit handler (logging, ``weakref.finalize``) still runs.
"""
from __future__ import annotations

import atexit
import gc

_registered = False


def collect_once_at_exit() -> None:
    """Register the exit-time collect-then-freeze (once per process). Register it early: exit
    handlers run last-registered first, so the ones added later by libraries run before it."""
    global _registered
    if not _registered:
        atexit.register(_collect_then_freeze)
        _registered = True


def _collect_then_freeze() -> None:
    gc.collect()
    gc.freeze()
