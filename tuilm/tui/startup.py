"""Process set-up before a dashboard runs."""

from __future__ import annotations


def freeze_startup_objects() -> None:
    """Exempt everything alive now (torch, the model, the data, Textual) from garbage collection for good.

    The UI allocates most of the process's objects, so the collector's full passes run in its thread: with some
    360,000 objects tracked, each took about 180 ms holding the GIL, a stall of the trainer (and of keys)
    benchmarks/dashboard_overhead.py saw. Frozen, they are never scanned again; what is made later still is.
    """
    import gc

    gc.collect()
    gc.freeze()
