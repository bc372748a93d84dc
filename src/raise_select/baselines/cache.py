"""A JSON Lines cache of per-example results (scores, judgments), keyed by a string.

Appending one line per result makes long scoring passes resumable: a re-run reads the
file back and computes only what is missing. A line cut by a crash is ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..io import append_jsonl

log = logging.getLogger(__name__)


class JsonlCache:
    def __init__(self, path: Path | None):
        self.path = path
        self.records: dict[str, dict] = {}
        if path is not None and path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(rec, dict) and "key" in rec:
                        self.records[rec["key"]] = rec
            log.info("%s: %d cached result(s)", path, len(self.records))

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> dict:
        rec = {"key": key, **record}
        self.records[key] = rec
        if self.path is not None:
            append_jsonl(self.path, rec)
        return rec
