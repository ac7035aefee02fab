"""A Ray cluster of simulated nodes on this machine, bound to loopback only: what the Ray tests
and the Ray benchmark run on (``ray.cluster_utils.Cluster``, one raylet per node).

Facts it encodes, each a way such a cluster goes wrong otherwise:

- Ray binds a non-loopback address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; Ray reads
  the variable when it is imported, so the constant it read is set as well (the Ray processes
  started later read the variable).
- ``RAY_AUTH_MODE=disabled`` and ``RAY_USAGE_STATS_ENABLED=0``: no token to hand around, no
  usage report attempted.
- ``RAY_TMPDIR`` is a short fresh folder (Ray's socket paths must stay under the Unix limit);
  it is removed afterwards.
- A node may fail to start on a busy machine (a raylet not registered within Ray's fixed
  30 s); the start is torn down and tried again, up to ``STARTS`` times.
- ``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S=30``: Serve kills a proxy that is not ready within
  5 s, which a proxy starting on a busy 2-core machine can miss (``deploy`` rides that out,
  but it costs a restart).
- Ray's workers import modelserve from the same tree as the caller, wherever their working
  folder is (``PYTHONPATH``).

Everything set is restored, and every Ray process is gone, when the block ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["loopback_cluster"]

log = logging.getLogger("modelserve.ray")


@contextlib.contextmanager
def loopback_cluster(
    head: Mapping[str, Any],
    workers: Sequence[Mapping[str, Any]] = (),
    *,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[Any, list[Any]]]:
    """Starts a head node (``head``: ``Cluster.add_node`` arguments, the dashboard off unless
    asked) and ``workers``, connects this process (``ray.init``), and yields ``(cluster, worker
    nodes)``; at the end shuts Ray Serve, Ray and every node down. ``env``: more variables for
    the Ray processes (e.g. ``RAY_worker_niceness``)."""
    import ray
    from ray._private import ray_constants

    import modelserve

    scratch = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    package_root = str(Path(modelserve.__file__).resolve().parents[1])
    variables = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
        "RAY_TMPDIR": str(scratch),
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    saved_env = {k: os.environ.get(k) for k in variables}
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(variables)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        cluster, nodes = _start({"include_dashboard": False, **head}, workers, scratch)
        try:
            yield cluster, nodes
        finally:
            from ray import serve

            try:
                serve.shutdown()
            finally:
                ray.shutdown()
                cluster.shutdown()
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(scratch, ignore_errors=True)


#: Tries at starting the cluster: a raylet that does not register with the GCS within Ray's fixed
#: 30 s (seen about once in ten suite runs on a busy 2-core machine) fails the whole start.
STARTS = 3


def _start(head: Mapping[str, Any], workers: Sequence[Mapping[str, Any]], scratch: Path) -> tuple[Any, list[Any]]:
    """Starts the nodes and connects; a failed try is torn down (processes and all) and the
    start tried again in a fresh folder, up to ``STARTS`` times."""
    import ray
    from ray.cluster_utils import Cluster

    attempt = 0
    while True:  # returns, or raises on the last try
        attempt += 1
        folder = scratch / str(attempt)
        folder.mkdir()
        os.environ["RAY_TMPDIR"] = str(folder)
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args=dict(head))
            nodes = [cluster.add_node(**w) for w in workers]
            ray.init(address=cluster.address, log_to_driver=False)
            cluster.wait_for_nodes()
            return cluster, nodes
        except Exception as e:
            log.warning("starting the loopback Ray cluster failed (try %d of %d): %s", attempt, STARTS, e)
            with contextlib.suppress(Exception):
                ray.shutdown()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.shutdown()
            _kill_processes_using(folder)  # a head node that failed to start is not in ``cluster``
            if attempt == STARTS:
                raise


def _kill_processes_using(folder: Path) -> None:
    """Kills the processes whose command line names ``folder`` (every Ray process names its
    session folder there)."""
    needle = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue  # gone meanwhile, or not ours to read
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # reap it when it is our child (the node's processes are)
