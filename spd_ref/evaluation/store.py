"""Finished work on disk, so that a long study that stops (killed, out of time) continues.

Each finished piece (a sensitivity scan, a scored setting) is one JSON file in a folder, named by a
hash of its key (everything that determines the result: model, TP degree, blocks, tasks, sizes,
dtypes...) and written atomically (a temporary file renamed into place), so a half-written result is
never read back. A rerun with the same arguments finds the finished pieces and computes the rest.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional


def canonical(key: dict) -> dict:
    """The key as it reads back from JSON (tuples become lists), so stored and asked keys compare equal."""
    return json.loads(json.dumps(key, sort_keys=True))


class ResultStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: dict) -> Path:
        text = json.dumps(canonical(key), sort_keys=True)
        return self.folder / f"{key.get('kind', 'item')}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"

    def get(self, key: dict) -> Optional[Any]:
        path = self.path(key)
        if not path.exists():
            return None
        stored = json.loads(path.read_text())
        return stored["value"] if stored["key"] == canonical(key) else None  # a hash collision reads as missing

    def put(self, key: dict, value: Any) -> Any:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": canonical(key), "value": value}))
        tmp.replace(path)
        return value

    def get_or_compute(self, key: dict, compute: Callable[[], Any]) -> Any:
        found = self.get(key)
        return found if found is not None else self.put(key, compute())
