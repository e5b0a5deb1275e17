"""One place decides whether the Hugging Face hub may be used and answers: ``radcot.net.hub_status``.

The probe is a real TCP connection to ``HF_ENDPOINT`` (a listening socket on 127.0.0.1 that counts its
connections, or a port nobody listens on), made once per process; ``HF_HUB_OFFLINE`` is read on each call.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

pytestmark = pytest.mark.fast


class CountingListener:
    """A TCP socket on 127.0.0.1 that accepts and counts connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self.sock.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_the_hub_is_probed_once_per_process(online, monkeypatch):
    from radcot._deps import hub_reachable

    hub = CountingListener()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.port}")
        assert [hub_reachable(), hub_reachable(), hub_reachable()] == [True, True, True]
        time.sleep(0.05)
        assert hub.accepted == 1  # the student loader, the encoder, the teacher and the preflight share one answer
    finally:
        hub.close()


def test_an_unreachable_hub_says_why_and_the_answer_is_kept(online, monkeypatch):
    from radcot.net import forget_hub_status, hub_status

    port = _closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    status = hub_status()
    assert time.perf_counter() - t0 < 2
    assert not status.reachable and status.endpoint == f"http://127.0.0.1:{port}"
    assert status.reason.startswith(f"http://127.0.0.1:{port} is unreachable (") and "refused" in status.reason
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        assert hub_status().reachable is False  # decided once per process
        forget_hub_status()
        assert hub_status().reachable is True
    finally:
        listener.close()
        forget_hub_status()


def test_hf_hub_offline_needs_no_probe(monkeypatch):
    from radcot.net import hub_offline, hub_status

    hub = CountingListener()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.port}")
        for value, offline in (("1", True), ("TRUE", True), ("on", True), ("0", False), ("", False)):
            monkeypatch.setenv("HF_HUB_OFFLINE", value)
            assert hub_offline() is offline
        monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
        status = hub_status()
        assert (status.reachable, status.reason) == (False, "HF_HUB_OFFLINE is set")
        time.sleep(0.05)
        assert hub.accepted == 0
    finally:
        hub.close()


def test_the_probe_timeout_is_checked():
    from radcot.net import hub_status

    with pytest.raises(TypeError, match="positive number of seconds"):
        hub_status(timeout="3")


def test_the_preflight_reports_an_unreachable_hub_in_seconds(online, monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants as hc

    from radcot.experiment.preflight import _model_problem

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.perf_counter()
    problem = _model_problem("rows.x.student.model", "google/flan-t5-small")
    assert time.perf_counter() - t0 < 3
    assert "google/flan-t5-small is not in the local Hugging Face cache and http://127.0.0.1:" in problem
    assert "is unreachable (" in problem and "hf download google/flan-t5-small --local-dir DIR" in problem
