"""Experiments over many runs: `tuilm sweep` trains a grid of settings, `tuilm runs` lists run folders and
`tuilm compare` sets runs side by side.

spec: the grid, budget and seeds, expanded into runs; runner: training them through failures and Ctrl-C;
results: results.csv / results.md and tables; plots: PNG and terminal charts; runinfo: reading one run folder;
listing: `tuilm runs` and `tuilm compare`.
"""

from tuilm.sweep.listing import compare_command, runs_command
from tuilm.sweep.runner import rebuild_results, sweep_command

__all__ = ["compare_command", "rebuild_results", "runs_command", "sweep_command"]
