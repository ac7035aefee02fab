"""The frontends' runtime interface (server/runtime_api.py): both runtimes satisfy it, and the
Ray ingress gets its gRPC handlers through public names."""

import inspect

import pytest

from modelserve import Runtime
from modelserve.server.runtime_api import ServingRuntime


def _ingress():
    """modelserve.ray._ingress (its replicas' module imports Ray Serve, whose import warns)."""
    pytest.importorskip("ray.serve")
    from modelserve.ray import _ingress

    return _ingress


def _runtime_class(name):
    return Runtime if name == "Runtime" else _ingress().ClusterCatalog


RUNTIMES = ["Runtime", "ClusterCatalog"]


def _members(protocol: type) -> tuple[dict[str, object], set[str]]:
    """The protocol's methods by name, and its data members (annotated names)."""
    methods = {n: f for n, f in vars(protocol).items() if not n.startswith("_") and inspect.isfunction(f)}
    return methods, {n for n in protocol.__annotations__ if not n.startswith("_")}


def _parameters(function: object) -> list[tuple[str, object, bool]]:
    """(name, kind, has a default) of each parameter but ``self``: what a caller relies on."""
    params = list(inspect.signature(function).parameters.values())[1:]
    return [(p.name, p.kind, p.default is not p.empty) for p in params]


@pytest.fixture
def runtime(tmp_path):
    with Runtime(tmp_path / "repository", start=False, state_dir=tmp_path / "state") as rt:
        yield rt


@pytest.fixture
def catalog():
    cat = _ingress().ClusterCatalog({"models": {}}, {})
    yield cat
    cat.traffic.close()


@pytest.mark.parametrize("name", RUNTIMES)
def test_each_runtime_has_every_method_of_the_serving_runtime_with_its_parameters(name):
    cls = _runtime_class(name)
    methods, _ = _members(ServingRuntime)
    assert methods, "ServingRuntime lists no methods"
    wrong = []
    for name, declared in methods.items():
        actual = getattr(cls, name, None)
        if actual is None:
            wrong.append(f"{cls.__name__}.{name} is missing")
            continue
        if inspect.iscoroutinefunction(actual) != inspect.iscoroutinefunction(declared):
            wrong.append(f"{cls.__name__}.{name}: async is {inspect.iscoroutinefunction(actual)}, "
                         f"ServingRuntime says {inspect.iscoroutinefunction(declared)}")
        if _parameters(actual) != _parameters(declared):
            wrong.append(f"{cls.__name__}.{name}{inspect.signature(actual)} does not match "
                         f"ServingRuntime.{name}{inspect.signature(declared)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", RUNTIMES)
def test_each_runtime_has_every_attribute_of_the_serving_runtime(name, request):
    from modelserve.traffic import TrafficManager

    _, attributes = _members(ServingRuntime)
    assert "traffic" in attributes
    instance = request.getfixturevalue(name.lower().replace("clustercatalog", "catalog"))
    missing = sorted(a for a in attributes if not hasattr(instance, a))
    assert not missing, f"{name} lacks ServingRuntime's {missing}"
    assert isinstance(instance.traffic, TrafficManager)
    assert isinstance(instance, ServingRuntime)


def test_the_grpc_frontend_hands_out_a_handler_for_every_rpc_the_ray_ingress_answers(catalog):
    from modelserve.server.common import ServerOptions
    from modelserve.server.grpc import GrpcFrontend
    from modelserve.server.health import Health

    ingress = _ingress()
    handlers = GrpcFrontend(catalog, ServerOptions(), Health(catalog)).rpc_handlers()
    unary = set(ingress.GRPC_UNARY_RPCS) | set(ingress.TRAFFIC_RPCS)
    assert set(handlers) == unary | {"ModelStreamInfer"}
    assert all(handlers[rpc].unary_unary is not None for rpc in unary)
    assert handlers["ModelStreamInfer"].stream_stream is not None
