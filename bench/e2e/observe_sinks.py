"""Payload sinks for bench/e2e/test_observability.py, named by ``--payload-sink
observe_sinks:StalledSink`` with this folder on PYTHONPATH.

``StalledSink.write`` never returns until ``close`` (the server's shutdown): the payload log's
queue fills and every further record is dropped and counted. The benchmark checks that requests
do not notice.
"""

from __future__ import annotations

import threading
from typing import Any


class StalledSink:
    def __init__(self) -> None:
        self.released = threading.Event()

    def write(self, records: list[dict[str, Any]]) -> None:
        self.released.wait()

    def close(self) -> None:
        self.released.set()
