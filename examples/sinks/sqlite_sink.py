"""A payload sink that keeps records in SQLite, to query them with SQL.

    PYTHONPATH=examples/sinks MODELSERVE_PAYLOAD_DB=payloads.db \
        modelserve serve --model-repository examples/models --payload-sink sqlite_sink:SQLiteSink

    sqlite3 payloads.db "select time, model, version, status, latency_ms from payloads order by time desc limit 5"

A sink is any class with ``write(records)`` and ``close()`` whose constructor takes no arguments
(README, "Payload logging"); it reads its own settings (here the database path from
``MODELSERVE_PAYLOAD_DB``). ``write`` runs on the payload log's writer thread and gets the records as
JSON-ready dicts; while it runs, new records queue up to the log's byte limit and are dropped
(and counted) past it, so a slow sink never slows a request.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any


class SQLiteSink:
    def __init__(self) -> None:
        self.db = sqlite3.connect(os.environ.get("MODELSERVE_PAYLOAD_DB", "payloads.db"), check_same_thread=False)
        self.db.execute(
            "create table if not exists payloads (time text, model text, version integer, status text, "
            "trace_id text, latency_ms real, record text)"
        )
        self.db.execute("create index if not exists payloads_by_model on payloads (model, time)")

    def write(self, records: list[dict[str, Any]]) -> None:
        rows = [(r.get("time"), r.get("model"), r.get("version"), r.get("status"), r.get("trace_id"),
                 r.get("latency_ms"), json.dumps(r)) for r in records]
        with self.db:  # one transaction per batch of records
            self.db.executemany("insert into payloads values (?, ?, ?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        self.db.close()
