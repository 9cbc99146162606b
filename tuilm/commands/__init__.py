"""The command layer: what parses options, prints to the terminal and decides exit codes, one module a command.

`tuilm.cli` declares the typer app and calls in here; everything below (data, model, train, tui, chat, sweep)
is a library that never imports this package. Imports stay inside functions so `tuilm --help` loads no torch.
"""
