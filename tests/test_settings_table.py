"""docs/training.md's settings table against the settings themselves: every setting is in it, and every key in it
is a setting, and the dashboard keys paragraph names every key (the event table is checked the same way in
test_json.py)."""

from __future__ import annotations

import re
from pathlib import Path

from tuilm.config import all_keys

TABLE = Path(__file__).resolve().parent.parent / "docs" / "training.md"


def documented_keys() -> list[str]:
    """The keys of the table's first column: `section.key`, then bare `key`s of the same section."""
    text = TABLE.read_text(encoding="utf-8")
    table = text[text.index("| key | default | meaning |") :]
    keys = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        section = None
        for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if "." in name:
                section, name = name.split(".", 1)
            keys.append(f"{section}.{name}")
    return keys


def test_every_setting_is_in_the_table_and_every_key_there_is_a_setting():
    documented = documented_keys()
    assert len(documented) == len(set(documented)), "a key is listed twice"
    assert sorted(set(all_keys()) - set(documented)) == []  # settings the table leaves out
    assert sorted(set(documented) - set(all_keys())) == []  # keys that are not settings


def test_every_dashboard_key_is_in_the_keys_paragraph():
    from tuilm.tui.app import Dashboard

    text = TABLE.read_text(encoding="utf-8")
    paragraph = text[text.index("**Dashboard keys**") :].split("\n\n")[0]
    named = set(re.findall(r"`([^`]+)`", paragraph))
    spelled = {"question_mark": "?", "enter": "Enter", "ctrl+c": "Ctrl-C", "ctrl+q": "Ctrl-Q"}
    keys = {spelled.get(k, k) for b in Dashboard.BINDINGS for k in b.key.split(",")}
    assert sorted(keys - named) == []
