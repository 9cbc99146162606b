"""Seeds folded: `tuilm compare A... vs B...`, the sweep's n per configuration, and the record table rendered from
the runs (benchmarks/record_table.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.helpers import run_tuilm
from tuilm.commands.groups import expand, split_sides
from tuilm.errors import ConfigError
from tuilm.sweep.results import Group, Row
from tuilm.sweep.runinfo import RunSummary
from tuilm.sweep.stats import welch
from tuilm.train import events as ev

A = [2.1996, 2.2017, 2.1731]  # the seeds of tests/test_stats.py's independent computation
B = [2.1502, 2.1689, 2.1444, 2.1611]


def finished_run(folder: Path, bpc: float, steps: int = 300, elapsed: float = 30.0, val_chars: int = 1000) -> Path:
    """A run folder whose metrics.jsonl says it finished at `bpc` best val bits/char."""
    folder.mkdir(parents=True)
    data = {"val_characters": val_chars}
    events = [
        ev.RunStarted(str(folder), folder.name, "tiny", {}, 10, 5, "cpu", "fp32", data, steps),
        ev.Finished(steps, "max_steps", "completed", elapsed, 1000, bpc * 1.5, bpc, bpc * 1.5, bpc, 1e3, None, None),
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events), encoding="utf-8")
    return folder


def record_table():
    """benchmarks/record_table.py, imported once (it is a script, not a module of the package)."""
    if "record_table" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "record_table", Path(__file__).parent.parent / "benchmarks" / "record_table.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["record_table"] = module
        spec.loader.exec_module(module)
    return sys.modules["record_table"]


@pytest.fixture
def groups(tmp_path):
    for i, bpc in enumerate(A):
        finished_run(tmp_path / "sweep-a" / f"seed={i}", bpc)
    for i, bpc in enumerate(B):
        finished_run(tmp_path / f"b{i}", bpc, steps=600, elapsed=45.0)
    return tmp_path


def test_compare_two_groups_prints_the_difference_interval_and_p(groups):
    # Side A as a sweep folder (its runs), side B as a glob.
    out = run_tuilm("compare", str(groups / "sweep-a"), "vs", str(groups / "b*"))
    assert out.returncode == 0, out.stderr
    expected = welch(A, B)
    assert "n = 3" in out.stdout and "n = 4" in out.stdout
    assert f"B - A: {expected.diff:+.4f}, 95% CI [{expected.low:+.4f}, {expected.high:+.4f}]" in out.stdout
    assert "p = 0.0384" in out.stdout and "B has the lower" in out.stdout
    one = run_tuilm("compare", str(groups / "sweep-a"), "vs", str(groups / "b*"), "--alternative", "less", "--json")
    doc = json.loads(one.stdout)
    assert doc["kind"] == "compare_groups" and doc["a"]["n"] == 3 and doc["b"]["values"] == B
    assert doc["welch"]["p"] == pytest.approx(0.019199969324938984, rel=1e-7) and doc["welch"]["low"] is None


def test_compare_groups_refuses_bad_input_in_one_line(groups):
    for args, says in [
        ((str(groups / "b0"), "vs"), "both sides of vs"),
        ((str(groups / "b0"), "vs", str(groups / "b1")), "two runs or more"),
        ((str(groups / "b*"), "vs", str(groups / "b1"), str(groups / "b2")), "on both sides"),
        ((str(groups / "nope*"), "vs", str(groups / "b1")), "no such run folder"),
    ]:
        out = run_tuilm("compare", *args)
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_sides_and_expansion(groups):
    assert split_sides([Path("a"), Path("b")]) is None  # the plain run-by-run compare
    with pytest.raises(ConfigError, match="one vs"):
        split_sides([Path("a"), Path("vs"), Path("b"), Path("vs"), Path("c")])
    assert [p.name for p in expand([groups / "sweep-a"])] == ["seed=0", "seed=1", "seed=2"]


def test_a_sweep_group_reports_n_beside_mean_and_sd():
    rows = [
        Row(f"r{i}", {}, i, status, summary=RunSummary(Path("."), "r", "t", status, best_val_bpc=bpc))
        for i, (status, bpc) in enumerate([("completed", 2.0), ("completed", 2.2), ("diverged", 9.0)])
    ]
    group = Group({}, rows)
    assert group.n == 2  # the diverged seed is not averaged
    assert group.stat("best_val_bpc") == pytest.approx((2.1, 0.1414213562373095))


def test_the_record_table_is_rendered_from_the_runs(groups):
    module = record_table()
    rows = [{"change": "base", "runs": ["sweep-a"]}, {"change": "the change", "runs": ["b*"]}]
    table = module.render(rows, groups).splitlines()
    assert table[2] == "| 0 | base | 3 | 300 | 30.0 | 0.100 | 2.1915 ± 0.0159 |  |"
    assert table[3] == "| 1 | the change | 4 | 600 | 45.0 | 0.075 | 2.1561 ± 0.0110 | -0.0353, p = 0.0192 (kept) |"
    scaled = module.render(rows, groups, chars=2000).splitlines()  # half the runs' 1000 characters
    assert "| 1.0957 ± 0.0080 |" in scaled[2]


def test_a_rows_file_names_each_rows_command_and_renders_the_tried_rows(groups, tmp_path):
    module = record_table()
    rows_file = tmp_path / "records.toml"
    rows_file.write_text(
        'recipe = "tiny"\nseeds = 3\ncommon = ["train.threads=1"]\nout = "runs/r"\n'
        '[[row]]\nchange = "base"\nsteps = 300\nset = ["train.lr=1e-3", "model.n_layers=2"]\n'
        '[[row]]\nchange = "lr"\nset = ["train.lr=2e-3"]\n'
        '[[tried]]\nat = 0\nchange = "deeper"\nset = ["model.n_layers=4"]\nseeds = 1\nsteps = 600\n',
        encoding="utf-8",
    )
    spec = module.load_spec(rows_file)
    # Each row on top of the one before (its steps too); a tried row on top of its `at` row.
    assert module.sweep_command(spec, spec["row"][1]) == [
        "tuilm", "sweep", "tiny", "--seeds", "3", "--budget", "300",
        "--set", "train.threads=1", "--set", "train.lr=2e-3", "--set", "model.n_layers=2", "--out", "runs/r/1",
    ]  # fmt: skip
    tried = spec["tried"][0]
    assert tried["settings"] == {"train.lr": "1e-3", "model.n_layers": "4"} and tried["runs"] == ["runs/r/tried-0"]
    assert module.sweep_command(spec, tried)[3:7] == ["--seeds", "1", "--budget", "600"]
    # Rendered from runs: the rows measured by the groups fixture, the tried row against row 0.
    spec["row"][0]["runs"], spec["row"][1]["runs"], tried["runs"] = ["sweep-a"], ["b*"], ["b0"]
    table = module.render_tried(spec["tried"], spec["row"], groups).splitlines()
    assert table[2] == f"| deeper | 0 | 1 | 600 | 45.0 | {B[0]:.4f} | {B[0] - sum(A) / 3:+.4f} |"
    assert "--out runs/r/tried-0" in module.commands_block(module.load_spec(rows_file))
    tried["runs"] = ["not-yet"]  # a row not trained yet is said to be so, not a traceback
    assert module.NOT_RUN in module.render_tried(spec["tried"], spec["row"], groups)
