"""The wheel carries the recipes and the shipped tokenizer, so a non-editable install can use them."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_wheel_includes_recipes_and_vocab(tmp_path):
    pytest.importorskip("hatchling")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("tuilm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for recipe in (REPO / "baseline").glob("*.toml"):
        assert f"tuilm/_data/baseline/{recipe.name}" in names
    for vocab in (REPO / "vocab").glob("*.json"):
        assert f"tuilm/_data/vocab/{vocab.name}" in names
    assert "tuilm/tui/dashboard.tcss" in names or not (REPO / "tuilm/tui/dashboard.tcss").exists()
    assert not any(n.startswith(("tests/", "runs/", "benchmarks/")) for n in names)
