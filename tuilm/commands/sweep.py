"""`tuilm sweep`: plan the grid, refuse a folder that holds other settings, then train every run."""

from __future__ import annotations

from pathlib import Path


def sweep_command(
    recipe: str,
    grid: list[str],
    overrides: list[str],
    budget: str | None,
    seeds: int,
    out: Path | None,
    name: str | None,
    device: str | None,
) -> int:
    from tuilm.config import RunConfig
    from tuilm.errors import ConfigError
    from tuilm.sweep.runinfo import make_console
    from tuilm.sweep.runner import check_existing, run_sweep
    from tuilm.sweep.spec import base_config, default_name, make_spec, plan_runs, run_config

    spec = make_spec(recipe, grid, overrides, budget, seeds, device)
    base = base_config(spec)
    plan = plan_runs(spec, base)
    sweep_dir = Path(out) if out else Path("runs") / (name or default_name(spec, base))
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is a file; give --out a folder for the sweep")
    configs: dict[str, RunConfig | ConfigError] = {}
    for run in plan:
        try:
            configs[run.name] = run_config(base, run)
        except ConfigError as e:
            configs[run.name] = e
    check_existing(sweep_dir, plan, configs)
    from tuilm.run_setup import refuse_if_live

    for folder in (sweep_dir, *(sweep_dir / run.name for run in plan)):  # never write into a run being trained
        refuse_if_live(folder)
    return run_sweep(sweep_dir, spec, plan, configs, make_console())
