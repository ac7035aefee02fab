import asyncio
import datetime
import ipaddress
import threading
from pathlib import Path

import numpy as np
import pytest

import modelserve


def pytest_collection_modifyitems(config, items):
    if modelserve.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (modelserve.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Recorder:
    """A Python backend that records every batch it runs and returns ``OUTPUT0 = INPUT0 * 2``
    (plus ``OUTPUT1 = INPUT0 + 1``). With ``hold=True`` its first batch blocks until
    ``release()``, which keeps the (single) instance busy while a test fills the queue."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[dict[str, np.ndarray]] = []
        self.lock = threading.Lock()
        self.started = threading.Event()
        self._gate = threading.Event()
        if not hold:
            self._gate.set()
        self._held = False

    def release(self) -> None:
        self._gate.set()

    def execute(self, inputs):
        with self.lock:
            self.batches.append({k: np.array(v, copy=True) for k, v in inputs.items()})
            first = not self._held
            self._held = True
        self.started.set()
        if first:
            assert self._gate.wait(30), "test never released the backend"
        x = inputs["INPUT0"]
        if x.dtype == object:
            return {"OUTPUT0": x, "OUTPUT1": x}
        return {"OUTPUT0": x * 2, "OUTPUT1": x + 1}

    def batch_sizes(self) -> list[int]:
        with self.lock:
            return [len(b["INPUT0"]) for b in self.batches]


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def held():
    r = Recorder(hold=True)
    yield r
    r.release()


class LoopThread:
    """An asyncio loop on a daemon thread, where server frontends run while tests drive them."""

    def __init__(self, name: str = "test-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def write_certificates(folder: Path, ca: str = "modelserve test CA", client: str = "client",
                       client_org: str | None = None) -> Path:
    """A CA (``ca.crt``/``ca.key``), a server certificate for localhost and 127.0.0.1 and a client
    certificate (CN ``client``, O ``client_org`` when given), both signed by it, as PEM files in
    ``folder``; made with ``cryptography``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn, org=None):
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attributes)

    def issue(subject, key, issuer, issuer_key, is_ca=False, san=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(stem, cert, key):
        (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    authority = issue(name(ca), ca_key, name(ca), ca_key, is_ca=True)
    write("ca", authority, ca_key)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for stem, subject, alt in (("server", name("localhost"), san), ("client", name(client, client_org), None)):
        key = ec.generate_private_key(ec.SECP256R1())
        write(stem, issue(subject, key, authority.subject, ca_key, san=alt), key)
    return folder
