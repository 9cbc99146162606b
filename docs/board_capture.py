"""Text captures of `tuilm board` for docs/board.md: the synthetic runs of the snapshot tests, the app driven
headless with Textual's `App.run_test`, its screen exported as plain text (colours dropped).

    python docs/board_capture.py 120x40 lr-sweep/lr0.001-s1,lr-sweep/lr0.001-s2,lr-sweep/lr0.003-s1 x
    python docs/board_capture.py 80x24 lr-sweep/lr0.001-s1,hot h      # picked runs, then keys pressed
"""

from __future__ import annotations

import asyncio
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from tests.board_runs import write_run
from tuilm.tui.board import Board, BoardView
from tuilm.tui.board_data import BoardModel


def text(app) -> str:
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, color_system=None)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


async def capture(size: tuple[int, int], picked: list[str], keys: list[str]) -> str:
    folder = Path(tempfile.mkdtemp()) / "runs"
    for lr in (1e-3, 3e-3):
        for seed in (1, 2, 3):
            alerts = (150,) if seed == 3 else ()
            write_run(folder / "lr-sweep", f"lr{lr:g}-s{seed}", 400, lr=lr, seed=seed, alerts_at=alerts)
    write_run(folder, "hot", 120, end="failed", lr=2e-2, health_scale=40.0)
    model = BoardModel([folder])
    model.poll(discover=True)
    app = Board(model, BoardView(picked=[folder / p for p in picked]))
    async with app.run_test(size=size) as pilot:
        await pilot.press(*keys)
        await pilot.pause(0.3)
        return text(app)


if __name__ == "__main__":
    size = tuple(int(n) for n in sys.argv[1].split("x"))
    picked = [p for p in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if p]
    print(asyncio.run(capture(size, picked, sys.argv[3:])))
