"""What modelserve.ray needs that does not need Ray: the ``ray`` section of config.yaml, the
``modelserve ray deploy`` command line, and the install hint where Ray is missing. The cluster
itself is tested in test_ray.py (marked ``ray``)."""

import sys

import pytest

from modelserve.cli import build_parser
from modelserve.config import ConfigError, parse_config

BROKEN = [
    ({"ray": {"min_replicas": 3, "max_replicas": 2}}, "ray", "min_replicas <= max_replicas; got 3 > 2"),
    ({"ray": {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 5}}, "ray", "initial_replicas within"),
    ({"ray": {"max_replicas": 0}}, "ray.max_replicas", "got 0"),
    ({"ray": {"target_ongoing_requests": 0}}, "ray.target_ongoing_requests", "got 0"),
    ({"ray": {"num_cpus": -1}}, "ray.num_cpus", "got -1"),
    ({"ray": {"replicas": 2}}, "ray.replicas", "did you mean"),
]


@pytest.mark.parametrize("data, key, fragment", BROKEN, ids=[b[2][:30] for b in BROKEN])
def test_broken_ray_section_names_file_and_key(data, key, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="models/m/config.yaml")
    matching = [e for e in info.value.errors if e.startswith(f"models/m/config.yaml: {key}:")]
    assert matching and any(fragment in e for e in matching), info.value.errors


def test_ray_section_defaults_to_one_replica_of_one_cpu():
    ray = parse_config({}).ray
    assert (ray.min_replicas, ray.max_replicas, ray.num_cpus, ray.num_gpus) == (1, 1, 1.0, 0.0)
    scaled = parse_config({"ray": {"min_replicas": 0, "max_replicas": 8, "num_cpus": 0.5}}).ray
    assert (scaled.min_replicas, scaled.max_replicas, scaled.num_cpus) == (0, 8, 0.5)


def test_ray_deploy_command_line():
    args = build_parser().parse_args(
        ["ray", "deploy", "--model-repository", "models", "--address", "auto", "--model", "mlp", "--grpc-port", "9001"]
    )
    assert (args.model_repository, args.address, args.model, args.grpc_port, args.http_port) == (
        "models", "auto", ["mlp"], 9001, 8000)
    assert args.proxy_location == "EveryNode" and args.state_dir is None


def test_without_ray_the_error_names_the_install(monkeypatch):
    import modelserve.ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "modelserve.ray._app", raising=False)  # imported by test_ray, maybe
    monkeypatch.delattr(modelserve.ray, "_app", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'modelserve\[ray\]'"):
        modelserve.ray.deploy


def test_a_replica_refusal_keeps_its_class_message_and_retry_hint():
    pytest.importorskip("ray.serve")
    from modelserve.errors import InternalError, ResourceExhaustedError
    from modelserve.ray._replica import raise_remote_error

    with pytest.raises(ResourceExhaustedError, match="queue of model 'm' is full") as full:
        raise_remote_error(("ResourceExhaustedError", "queue of model 'm' is full", 0.25))
    assert full.value.retry_after_s == 0.25
    with pytest.raises(InternalError, match="boom"):  # not a modelserve error: INTERNAL
        raise_remote_error(("KeyError", "boom", None))


class _FakeServe:
    """Ray Serve as a busy node shows it: the first proxy is killed before it is ready (so the
    first ``serve.start`` fails), and its replacement is STARTING for ``starting`` polls."""

    def __init__(self, starting):
        self.starts, self.starting = 0, starting

    def start(self, **options):
        import ray

        self.starts += 1
        if self.starts == 1:
            raise ray.exceptions.ActorDiedError()

    def status(self):
        from types import SimpleNamespace

        self.starting -= 1
        return SimpleNamespace(proxies={"head": "STARTING" if self.starting >= 0 else "HEALTHY"})


def test_deploy_rides_out_a_proxy_that_serve_restarts_while_starting(monkeypatch):
    pytest.importorskip("ray.serve")
    from modelserve.ray import _app

    now = [0.0]
    fake = _FakeServe(starting=3)
    monkeypatch.setattr(_app, "serve", fake)
    _app._start_serve({}, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert fake.starts == 2 and now[0] == 1.5  # connected again, then waited out three STARTING polls

    fake = _FakeServe(starting=1000)
    monkeypatch.setattr(_app, "serve", fake)
    with pytest.raises(TimeoutError, match=r"proxies are not ready after 10 s: \{'head': 'STARTING'\}"):
        _app._start_serve({}, timeout_s=10, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))


def catalog_with(ready):
    """A ClusterCatalog whose versions' replicas have answered (no cluster needed)."""
    from modelserve.ray._ingress import ClusterCatalog

    cat = ClusterCatalog({"models": {"m": {"versions": {1: "m-v1", 2: "m-v2", 3: "m-v3"}, "labels": {"stable": 3},
                                           "default": 3}}}, {})
    for v in (1, 2, 3):
        cat._described[("m", v)] = {"ready": v in ready}
    return cat


def test_the_cluster_catalog_rolls_the_default_back_to_the_newest_older_ready_version():
    cat = catalog_with(ready={1, 3})
    assert cat.rollback("m", None, None) == 1  # version 2 is not READY
    assert cat.resolve_version("m") == 1
    assert cat.rollback("m", 3, "stable") == 3 and cat.rollback("m", 1, "stable") == 1
    assert cat.resolve_version("m", "stable") == 1


def test_the_cluster_catalog_refuses_a_rollback_it_cannot_do():
    from modelserve.errors import NotFoundError, UnavailableError

    cat = catalog_with(ready={3})
    with pytest.raises(UnavailableError, match="no READY version older than 3"):
        cat.rollback("m", None, None)
    with pytest.raises(UnavailableError, match="version 2 is not READY"):
        cat.rollback("m", 2, None)
    with pytest.raises(NotFoundError, match="no label 'canary'"):
        cat.rollback("m", None, "canary")


def test_the_label_and_rollback_rpcs_are_served_through_rays_grpc_proxy():
    from modelserve._proto import modelserve_pb2

    from modelserve.ray._ingress import TRAFFIC_RPCS

    service = modelserve_pb2.DESCRIPTOR.services_by_name["TrafficService"]
    assert set(TRAFFIC_RPCS) == {m.name for m in service.methods}
