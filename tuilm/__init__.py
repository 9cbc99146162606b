"""tuilm: a terminal workbench for training and sampling small BPE language models."""

__version__ = "0.1.0"
