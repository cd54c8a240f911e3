"""The abstract contract: requests, expires/configure, and a user's own server."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from processes import wait_until

from pytest_expire import timer
from pytest_expire.timer import api


class RecordingClient(timer.TimerClient):
    def __init__(self, fail_acquire: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_acquire = fail_acquire

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        self.calls.append(("acquire", scope_id, expiration_time))
        if self.fail_acquire:
            raise ConnectionError("no server")

    def release(self, scope_id: str) -> None:
        self.calls.append(("release", scope_id))


@pytest.fixture(autouse=True)
def no_configured_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "_default_client", None)


def test_timer_request_equality_slots_and_pickle() -> None:
    request = timer.TimerRequest(123, "scope", 10.5)
    assert request == timer.TimerRequest(123, "scope", 10.5)
    assert request != timer.TimerRequest(123, "scope", 11.0)
    assert request != timer.TimerRequest(124, "scope", 10.5)
    assert request != ("not", "a", "request")
    with pytest.raises(AttributeError):
        request.extra = 1  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(request)) == request
    assert "scope" in repr(request)


def test_request_types_live_in_api_and_keep_their_torch_import_paths() -> None:
    from pytest_expire.timer import file_based_local_timer, unix_socket_timer

    assert timer.FileTimerRequest is api.FileTimerRequest
    assert file_based_local_timer.FileTimerRequest is api.FileTimerRequest
    assert timer.TimerRequest is api.TimerRequest
    assert unix_socket_timer.OnExpired is api.OnExpired
    request = api.FileTimerRequest(123, "scope", 10.5, 9)
    assert isinstance(request, timer.TimerRequest)
    assert request.worker_pid == 123


def test_the_library_imports_nothing_of_the_plugin() -> None:
    # What the library's imports add; a process started during a session may
    # hold some of the plugin's modules already (its startup hook).
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from pytest_expire.timer import api, file_based_local_timer, lifetime, local_timer\n"
        "from pytest_expire.timer import unix_socket_timer, debug_info_logging\n"
        "print(' '.join(sorted(m for m in set(sys.modules) - before "
        "if m.startswith('pytest_expire'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    added = result.stdout.split()
    assert "pytest_expire.timer.unix_socket_timer" in added
    assert [m for m in added if not m.startswith("pytest_expire.timer")] in ([], ["pytest_expire"])


def test_timer_requests_order_by_expiration_time() -> None:
    early, late = timer.TimerRequest(9, "z", 1.0), timer.TimerRequest(2, "a", 2.0)
    assert early < late
    assert not late < early
    assert sorted([late, early]) == [early, late]


def test_expires_without_client_raises() -> None:
    with pytest.raises(RuntimeError, match="configure"), timer.expires(after=1):
        pass


def test_expires_acquires_once_and_releases_once() -> None:
    client = RecordingClient()
    before = time.time()
    with timer.expires(after=5, scope="s", client=client):
        assert client.calls == [("acquire", "s", pytest.approx(before + 5, abs=1))]
    assert client.calls[1:] == [("release", "s")]


def test_expires_releases_when_the_body_raises_and_lets_it_propagate() -> None:
    client = RecordingClient()
    with pytest.raises(KeyboardInterrupt), timer.expires(after=5, scope="s", client=client):
        raise KeyboardInterrupt
    assert [call[0] for call in client.calls] == ["acquire", "release"]


def test_failed_acquire_skips_the_body() -> None:
    client = RecordingClient(fail_acquire=True)
    ran = False
    with pytest.raises(ConnectionError), timer.expires(after=5, client=client):
        ran = True
    assert not ran
    assert [call[0] for call in client.calls] == ["acquire"]


def test_configured_client_is_the_default() -> None:
    client = RecordingClient()
    timer.configure(client)
    with timer.expires(after=1, scope="x"):
        pass
    assert [call[0] for call in client.calls] == ["acquire", "release"]


def test_default_scope_is_the_callers_line_so_nested_scopes_differ() -> None:
    client = RecordingClient()
    with timer.expires(after=5, client=client):  # noqa: SIM117 (two lines, two scopes)
        with timer.expires(after=1, client=client):
            pass
    outer, inner = client.calls[0][1], client.calls[1][1]
    assert outer != inner
    assert outer.startswith(__file__ + "#")
    assert int(inner.rsplit("#", 1)[1]) == int(outer.rsplit("#", 1)[1]) + 1
    # The inner release frees the inner timer only.
    assert client.calls[2:] == [("release", inner), ("release", outer)]


@pytest.mark.parametrize("after", ["5", None, True, float("nan"), -1])
def test_expires_rejects_a_bad_duration(after: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="after"):
        timer.expires(after=after, client=RecordingClient())


class ListQueue(timer.RequestQueue):
    """A user's queue: a list guarded by a condition."""

    def __init__(self) -> None:
        self.items: list[timer.TimerRequest] = []
        self.cond = threading.Condition()

    def put(self, request: timer.TimerRequest) -> None:
        with self.cond:
            self.items.append(request)
            self.cond.notify()

    def size(self) -> int:
        return len(self.items)

    def get(self, size: int, timeout: float) -> list[timer.TimerRequest]:
        with self.cond:
            self.cond.wait_for(lambda: self.items, timeout)
            taken, self.items = self.items[:size], self.items[size:]
            return taken


class DictServer(timer.TimerServer):
    """A user's server implementing only the abstract methods, as torch documents."""

    def __init__(self, request_queue: timer.RequestQueue, max_interval: float) -> None:
        super().__init__(request_queue, max_interval)
        self.timers: dict[tuple[Any, str], timer.TimerRequest] = {}
        self.reaped: list[Any] = []
        self.reap_results: list[bool | Exception] = []

    def register_timers(self, timer_requests: list[timer.TimerRequest]) -> None:
        for request in timer_requests:
            if request.expiration_time < 0:
                self.timers.pop((request.worker_id, request.scope_id), None)
            else:
                self.timers[(request.worker_id, request.scope_id)] = request

    def clear_timers(self, worker_ids: set[Any]) -> None:
        for key in [key for key in self.timers if key[0] in worker_ids]:
            del self.timers[key]

    def get_expired_timers(self, deadline: float) -> dict[Any, list[timer.TimerRequest]]:
        expired: dict[Any, list[timer.TimerRequest]] = {}
        for request in self.timers.values():
            if request.expiration_time <= deadline:
                expired.setdefault(request.worker_id, []).append(request)
        return expired

    def _reap_worker(self, worker_id: Any) -> bool:
        self.reaped.append(worker_id)
        result = self.reap_results.pop(0) if self.reap_results else True
        if isinstance(result, Exception):
            raise result
        return result


def test_user_subclass_reaps_expired_workers_and_keeps_live_ones() -> None:
    queue = ListQueue()
    server = DictServer(queue, max_interval=0.05)
    server.start()
    try:
        now = time.time()
        queue.put(timer.TimerRequest("hung", "a", now + 0.1))
        queue.put(timer.TimerRequest("fine", "a", now + 60))
        queue.put(timer.TimerRequest("released", "a", now + 0.1))
        queue.put(timer.TimerRequest("released", "a", -1))
        wait_until(lambda: server.reaped)
        time.sleep(0.2)
        assert server.reaped == ["hung"]
        assert list(server.timers) == [("fine", "a")]
    finally:
        server.stop()
    assert not server.is_running


def test_a_failed_reap_is_retried_and_an_exception_counts_as_reaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = ListQueue()
    server = DictServer(queue, max_interval=0.02)
    server.reap_results = [False, RuntimeError("boom")]
    server.start()
    try:
        queue.put(timer.TimerRequest("w", "a", time.time()))
        wait_until(lambda: not server.timers and len(server.reaped) == 2)
    finally:
        server.stop()
    assert server.reaped == ["w", "w"]
    assert "could not reap worker 'w'" in caplog.text
    assert "error reaping worker 'w'" in caplog.text


def test_an_exception_in_a_round_is_logged_and_the_watchdog_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = ListQueue()
    server = DictServer(queue, max_interval=0.02)
    original = server.register_timers
    failures = [ValueError("bad batch")]

    def flaky_register(requests: list[timer.TimerRequest]) -> None:
        if requests and failures:
            raise failures.pop()
        original(requests)

    server.register_timers = flaky_register  # type: ignore[method-assign]
    server.start()
    try:
        queue.put(timer.TimerRequest("lost", "a", time.time()))
        wait_until(lambda: not failures)
        queue.put(timer.TimerRequest("w", "a", time.time()))
        wait_until(lambda: server.reaped == ["w"])
    finally:
        server.stop()
    assert "error running the watchdog" in caplog.text


def test_start_on_a_running_server_does_nothing_and_restart_after_stop_works() -> None:
    queue = ListQueue()
    server = DictServer(queue, max_interval=0.02)
    server.start()
    thread = server._watchdog_thread
    server.start()  # torch's servers accept it (its tests call it twice)
    assert server._watchdog_thread is thread
    assert [t for t in threading.enumerate() if t.name.startswith("DictServer")] == [thread]
    with pytest.raises(RuntimeError, match="already running in a thread"):
        server.start(process=True)
    server.stop()
    server.start()
    try:
        queue.put(timer.TimerRequest("w", "a", time.time()))
        wait_until(lambda: server.reaped == ["w"])
    finally:
        server.stop()


def test_configure_logs_the_client(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=api.__name__):
        timer.configure(RecordingClient())
    assert "RecordingClient" in caplog.text
