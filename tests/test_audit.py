"""The audit log of management actions (traffic/store.py, Note [Audit entries]): repository
load and unload, settings, traffic changes, labels and rollbacks, through HTTP, gRPC and the
in-process Runtime, each recorded once with its actor (common.py, Note [Audit actor]) and
outcome. Entries are read back through ``GET /v2/traffic/audit`` and from ``audit.jsonl``."""

import json
import ssl
import urllib.error
import urllib.request

import grpc
import pytest
from conftest import LoopThread, write_certificates
from modelserve._proto import inference_pb2 as ipb
from modelserve._proto import inference_pb2_grpc as ipb_grpc
from modelserve._proto import modelserve_pb2 as pb
from modelserve._proto import modelserve_pb2_grpc as pb_grpc
from modelserve.errors import InvalidArgumentError, NotFoundError
from modelserve.server.app import Server
from modelserve.server.common import ServerOptions, actor_of
from test_traffic_server import call
from traffic_models import write_model

BROKEN = "raise RuntimeError('broken version')\n"


def _repository(root):
    write_model(root, "m", {1: {}, 2: {}}, "labels: {stable: 1}\n")
    write_model(root, "other", {1: {}})
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "config.yaml").write_text((root / "other" / "config.yaml").read_text())
    (root / "broken" / "1" / "model.py").write_text(BROKEN)
    return root


def _start(root, **options):
    loop = LoopThread("audit-test")
    s = Server(root, ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0, **options),
               model_control_mode="explicit", load_models=["m"], state_dir=root / "state")
    loop.run(s.start())
    return s, loop


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s, loop = _start(_repository(tmp_path_factory.mktemp("audit")))
    yield s
    loop.run(s.shutdown())
    loop.close()


@pytest.fixture
def grpc_channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel


def listed(server, path="/v2/traffic/audit"):
    status, body = call(server, "GET", path + "?limit=10000")
    assert status == 200, body
    return body["entries"]


def on_disk(server):
    path = server.runtime.traffic.store.directory / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def by(server, actor):
    """The entries of ``actor``, as listed over HTTP; the same as audit.jsonl holds."""
    entries = [e for e in listed(server) if e["actor"] == actor]
    assert entries == [e for e in on_disk(server) if e["actor"] == actor]
    return entries


# --- who: the actor ---------------------------------------------------------------------------------


def test_a_named_actor_comes_first_then_the_certificate_subject_then_the_peer():
    assert actor_of("alice", "http:10.0.0.1", "CN=client") == "alice"
    assert actor_of("  ", "grpc:ipv4:10.0.0.1:5", "CN=client") == "mtls:CN=client"
    assert actor_of(None, "grpc:ipv4:10.0.0.1:5") == "grpc:ipv4:10.0.0.1:5"
    assert actor_of("x" * 500, "http:10.0.0.1") == "x" * 200


def test_an_http_call_without_the_header_is_recorded_with_the_peer_address(server):
    before = len(listed(server))
    assert call(server, "POST", "/v2/models/m/labels/no-header", {"version": 1})[0] == 200
    (entry,) = listed(server)[before:]
    assert (entry["actor"], entry["action"], entry["outcome"]) == ("http:127.0.0.1", "label", "success")


def test_grpc_metadata_names_the_actor_of_a_repository_call(server, grpc_channel):
    stub = ipb_grpc.GRPCInferenceServiceStub(grpc_channel)
    stub.RepositoryModelLoad(ipb.RepositoryModelLoadRequest(model_name="other"),
                             metadata=[("x-modelserve-actor", "deploy-bot")])
    (entry,) = by(server, "deploy-bot")
    assert (entry["action"], entry["endpoint"], entry["outcome"]) == ("load", "other", "success")


# --- what: every management action, with its outcome ---------------------------------------------


def test_http_load_and_unload_are_recorded_with_the_header_actor_and_success(server):
    header = {"X-Modelserve-Actor": "alice"}
    assert call(server, "POST", "/v2/repository/models/other/load", {}, header)[0] == 200
    assert call(server, "POST", "/v2/repository/models/other/unload", {}, header)[0] == 200
    load, unload = by(server, "alice")
    assert (load["action"], load["endpoint"], load["outcome"]) == ("load", "other", "success")
    assert load["after"] == {"default": 1, "versions": {"1": "READY"}}
    assert (unload["action"], unload["endpoint"], unload["outcome"]) == ("unload", "other", "success")
    assert unload["before"] == load["after"] and unload["after"] is None
    assert "error" not in load and "error" not in unload
    assert all(e["time"].endswith("Z") for e in (load, unload))


def test_a_grpc_load_of_an_unknown_model_is_recorded_as_a_failure_with_not_found(server, grpc_channel):
    stub = ipb_grpc.GRPCInferenceServiceStub(grpc_channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.RepositoryModelLoad(ipb.RepositoryModelLoadRequest(model_name="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # the error reaches the caller unchanged
    entry = [e for e in listed(server) if e["endpoint"] == "nope"][-1]
    assert (entry["action"], entry["outcome"], entry["error"]["code"]) == ("load", "failure", "NOT_FOUND")
    assert entry["error"]["message"] == e.value.details() and "model 'nope' not found" in entry["error"]["message"]
    assert entry["actor"].startswith("grpc:ipv4:127.0.0.1:")


def test_a_load_that_fails_is_recorded_with_the_reason(server):
    status, body = call(server, "POST", "/v2/repository/models/broken/load", {}, {"X-Modelserve-Actor": "carol"})
    assert status == 400
    (entry,) = by(server, "carol")
    assert (entry["action"], entry["endpoint"], entry["outcome"]) == ("load", "broken", "failure")
    assert entry["error"] == {"code": "INVALID_ARGUMENT", "message": body["error"]}
    assert "broken version" in entry["error"]["message"]


def test_a_settings_change_over_http_records_the_changed_sections_before_and_after(server):
    path = "/modelserve/v1/models/m/versions/2/settings"
    status, _ = call(server, "PATCH", path, {"instances": {"max": 3}}, {"X-Modelserve-Actor": "tuner"})
    assert status == 200
    (entry,) = by(server, "tuner")
    assert (entry["action"], entry["endpoint"], entry["outcome"]) == ("settings", "m", "success")
    assert entry["before"] == {"instances": {"count": 1, "min": 1, "max": 1}}
    assert entry["after"] == {"instances": {"count": 1, "min": 1, "max": 3}}
    assert entry["detail"] == {"version": 2, "change": {"instances": {"max": 3}}}


def test_a_body_the_frontend_refuses_is_recorded_as_a_failure(server):
    status, body = call(server, "PATCH", "/modelserve/v1/models/m/settings", raw=b"{not json",
                        headers={"X-Modelserve-Actor": "typo"})
    assert status == 400
    (entry,) = by(server, "typo")
    assert (entry["action"], entry["outcome"], entry["error"]["code"]) == ("settings", "failure", "INVALID_ARGUMENT")
    assert entry["error"]["message"] == body["error"]


def test_a_refused_traffic_change_is_recorded_with_its_error(server):
    status, body = call(server, "POST", "/v2/models/m/labels/stable", {"version": 9}, {"X-Modelserve-Actor": "dave"})
    assert status == 404
    (entry,) = by(server, "dave")
    assert (entry["action"], entry["outcome"], entry["error"]["code"]) == ("label", "failure", "NOT_FOUND")
    assert entry["before"] == {"label": "stable", "version": 1} and "after" not in entry


def test_traffic_changes_record_their_outcome(server):
    header = {"X-Modelserve-Actor": "erin"}
    policy = {"targets": [{"version": 1, "weight": 100}]}
    assert call(server, "PUT", "/v2/models/m/traffic", policy, header)[0] == 200
    assert call(server, "PUT", "/v2/models/m/traffic", {"targets": [{"version": 1, "weight": 50}]}, header)[0] == 400
    assert call(server, "DELETE", "/v2/models/m/traffic", None, header)[0] == 200
    entries = by(server, "erin")
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("policy.set", "success"), ("policy.set", "failure"), ("policy.clear", "success")]
    assert entries[0]["after"] == policy and entries[2]["before"] == policy
    assert entries[1]["error"]["code"] == "INVALID_ARGUMENT" and "100" in entries[1]["error"]["message"]


def test_an_action_through_http_is_recorded_once(server):
    before = len(on_disk(server))
    header = {"X-Modelserve-Actor": "once"}
    assert call(server, "PATCH", "/modelserve/v1/models/m/settings", {"instances": {"min": 1}}, header)[0] == 200
    assert call(server, "POST", "/v2/repository/models/m/load", {}, header)[0] == 200
    assert call(server, "POST", "/v2/models/m/rollback", {"label": "stable", "version": 1}, header)[0] == 200
    assert [e["action"] for e in on_disk(server)[before:]] == ["settings", "load", "rollback"]


def test_reads_are_not_recorded(server):
    before = len(on_disk(server))
    for path in ("/v2/models/m/traffic", "/modelserve/v1/models/m/settings", "/v2/models/m/traffic/audit",
                 "/v2/traffic/audit", "/v2/models/m"):
        assert call(server, "GET", path)[0] == 200
    assert len(on_disk(server)) == before


def test_the_model_listing_holds_every_action_of_that_model_only(server):
    assert call(server, "POST", "/v2/models/m/labels/listed", {"version": 2})[0] == 200
    entries = listed(server, "/v2/models/m/traffic/audit")
    assert {e["endpoint"] for e in entries} == {"m"}
    assert entries == [e for e in on_disk(server) if e["endpoint"] == "m"]


# --- in-process -------------------------------------------------------------------------------------


def test_in_process_rollback_and_set_label_are_recorded_as_in_process(server):
    rt = server.runtime
    before = len(on_disk(server))
    rt.set_label("m", "blue", 2)
    assert rt.rollback("m", 1, label="blue") == 1
    label, rollback = on_disk(server)[before:]
    assert (label["actor"], label["action"], label["outcome"]) == ("in-process", "label", "success")
    assert label["before"] == {"label": "blue", "version": None} and label["after"] == {"label": "blue", "version": 2}
    assert (rollback["actor"], rollback["action"], rollback["outcome"]) == ("in-process", "rollback", "success")
    assert rollback["before"] == {"label": "blue", "version": 2}
    assert rollback["after"] == {"label": "blue", "version": 1}


def test_an_in_process_action_takes_an_actor_and_a_refusal_propagates_unchanged(server):
    rt = server.runtime
    with pytest.raises(InvalidArgumentError, match="unknown or fixed setting"):
        rt.set_batching("m", actor="notebook", no_such_key=1)
    with pytest.raises(NotFoundError, match="model 'ghost' is not loaded"):
        rt.set_instances("ghost", count=2, actor="notebook")
    first, second = by(server, "notebook")
    assert (first["action"], first["outcome"], first["error"]["code"]) == ("settings", "failure", "INVALID_ARGUMENT")
    assert first["detail"]["change"] == {"dynamic_batching": {"no_such_key": 1}}
    assert (second["endpoint"], second["outcome"], second["error"]["code"]) == ("ghost", "failure", "NOT_FOUND")


# --- mutual TLS -------------------------------------------------------------------------------------


def _pki(folder):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (CN
    audit-client, O modelserve tests)."""
    pytest.importorskip("cryptography.x509")
    return write_certificates(folder, "audit test CA", "audit-client", "modelserve tests")


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    """A server that takes only clients with a certificate its CA signed (both ports), and
    an HTTP request function that presents one."""
    root = tmp_path_factory.mktemp("mtls")
    pki = _pki(root / "pki")
    s, loop = _start(_repository(root / "repo"), tls_cert=pki / "server.crt", tls_key=pki / "server.key",
                     tls_client_ca=pki / "ca.crt")
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))

    def https(method, path, body=None):
        req = urllib.request.Request(f"https://localhost:{s.http_port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=60, context=context) as r:
            return json.loads(r.read() or b"null")

    credentials = grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes(), (pki / "client.key").read_bytes(),
                                               (pki / "client.crt").read_bytes())
    with grpc.secure_channel(f"localhost:{s.grpc_port}", credentials) as channel:
        yield s, https, channel
    loop.run(s.shutdown())
    loop.close()


def test_a_mutual_tls_grpc_call_without_an_actor_records_the_client_certificate_subject(mtls):
    s, https, channel = mtls
    pb_grpc.TrafficServiceStub(channel).SetLabel(pb.SetLabelRequest(model="m", label="canary", version=2))
    ipb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(ipb.RepositoryModelLoadRequest(model_name="other"))
    label, load = https("GET", "/v2/traffic/audit")["entries"][-2:]
    assert (label["action"], label["endpoint"], load["action"], load["endpoint"]) == ("label", "m", "load", "other")
    assert label["actor"] == load["actor"] == "mtls:O=modelserve tests,CN=audit-client"  # RFC 2253, as gRPC writes it
    assert [label, load] == on_disk(s)[-2:]


def test_a_mutual_tls_http_call_without_the_header_is_recorded_with_the_peer_address(mtls):
    """uvicorn does not hand the client certificate to the app (no ASGI TLS extension)."""
    s, https, _ = mtls
    https("POST", "/v2/models/m/labels/over-https", {"version": 1})
    (entry,) = https("GET", "/v2/traffic/audit?limit=1")["entries"]
    assert (entry["action"], entry["actor"]) == ("label", "http:127.0.0.1")
