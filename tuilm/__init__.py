"""tuilm: a terminal workbench for training and sampling small BPE language models."""

__version__ = "0.1.0"

__all__ = ["Monitor", "__version__"]


def __getattr__(name: str):
    # Lazy: `import tuilm` (and `tuilm --help`) stays free of torch; tuilm.Monitor imports it on first use.
    if name == "Monitor":
        from tuilm.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'tuilm' has no attribute {name!r}")
