"""Checkpoints as safetensors files that carry everything needed to use them.

A model checkpoint (last.safetensors, best.safetensors) holds the weights plus string metadata: format and
tuilm versions, model config, tokenizer JSON, training config, step, tokens seen, val loss, bits/char and the
data fingerprint. The plain `safetensors` API reads it; `tuilm chat` needs nothing else. Training state
(optimizer moments, RNG, data position) goes to train_state.safetensors. Nothing is ever pickled or unpickled,
and every write is atomic.

Loading trusts nothing in a file; each step has its module:
- paths.py: where a run's checkpoints lie, and what a checkpoint argument (file, run directory, RUN@STEP) names;
- header.py: the header parsed and checked against the file's size before any data is read; pickles refused;
- metadata.py: the metadata's values type-checked, its model config compared with the tensors before any model
  is built;
- integrity.py: the checksum (xxh3-128 over the metadata and every tensor), written in one pass and verified
  before the weights are used;
- model.py: save and load a model checkpoint; train_state.py: the training state; run_files.py: a run
  directory's files saved and resumed as one unit.
The weights go into a model through tuilm.model.weights.load_weights, which checks their names, shapes and
finiteness. Whatever is wrong becomes one CheckpointError line.
"""

from tuilm.checkpoint.metadata import read_metadata
from tuilm.checkpoint.model import Checkpoint, load_checkpoint, read_weights, save_checkpoint

__all__ = ["Checkpoint", "load_checkpoint", "read_metadata", "read_weights", "save_checkpoint"]
