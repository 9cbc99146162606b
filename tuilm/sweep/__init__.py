"""Experiments over many runs: `tuilm sweep` trains a grid of settings; `tuilm runs` and `tuilm compare`
(in tuilm.commands.runs) read the run folders.

spec: the grid, budget and seeds, expanded into runs; runner: training them through failures and Ctrl-C;
results: results.csv / results.md and tables; plots: PNG and terminal charts; runinfo: reading one run folder.
"""
