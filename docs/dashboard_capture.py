"""A text capture of the dashboard for the README: a real run's recorded metrics.jsonl (tests/data/
recorded_run.jsonl) replayed into the dashboard, driven headless with Textual's `App.run_test`, its screen
exported as plain text (colours dropped), as docs/board_capture.py does for the board.

    python docs/dashboard_capture.py 100x32
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from docs.board_capture import text
from tests.helpers import replayed
from tuilm.tui.app import Dashboard


async def capture(size: tuple[int, int]) -> str:
    app = Dashboard(store=replayed())
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.5)
        return text(app)


if __name__ == "__main__":
    size = tuple(int(n) for n in (sys.argv[1] if len(sys.argv) > 1 else "100x32").split("x"))
    print(asyncio.run(capture(size)))
