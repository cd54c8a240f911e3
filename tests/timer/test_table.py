"""TimerTable against a plain dict model, and its heap kept bounded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_expire.timer._table import TimerTable
from pytest_expire.timer.api import TimerRequest

workers = st.integers(min_value=2, max_value=5)
scopes = st.sampled_from(["a", "b", "c"])
times = st.floats(min_value=0, max_value=100, allow_nan=False)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), workers, scopes, times),
        st.tuples(st.just("remove"), workers, scopes, st.none()),
        st.tuples(st.just("remove_worker"), workers, st.none(), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(operations, times)
def test_table_agrees_with_a_dict(ops: list[tuple[str, int, str, float]], deadline: float) -> None:
    table: TimerTable[TimerRequest] = TimerTable()
    model: dict[tuple[int, str], TimerRequest] = {}
    for op, worker, scope, expiration in ops:
        if op == "set":
            request = TimerRequest(worker, scope, expiration)
            table.set(request)
            model[(worker, scope)] = request
        elif op == "remove":
            assert table.remove(worker, scope) is model.pop((worker, scope), None)
        else:
            removed = table.remove_worker(worker)
            expected = [model.pop(key) for key in list(model) if key[0] == worker]
            assert sorted(map(id, removed)) == sorted(map(id, expected))
    assert len(table) == len(model)
    expected_next = min((r.expiration_time for r in model.values()), default=None)
    assert table.next_deadline() == expected_next
    expired = table.expired(deadline)
    expected_expired: dict[int, list[TimerRequest]] = {}
    for request in sorted(model.values(), key=lambda r: r.expiration_time):
        if request.expiration_time <= deadline:
            expected_expired.setdefault(request.worker_id, []).append(request)
    assert {w: sorted(map(id, t)) for w, t in expired.items()} == {
        w: sorted(map(id, t)) for w, t in expected_expired.items()
    }
    for timers in expired.values():
        assert [t.expiration_time for t in timers] == sorted(t.expiration_time for t in timers)


def test_expired_does_not_change_the_table() -> None:
    table: TimerTable[TimerRequest] = TimerTable()
    table.set(TimerRequest(2, "a", 1.0))
    assert table.expired(5.0) == table.expired(5.0)
    assert len(table) == 1


def test_released_timers_do_not_grow_the_heap_without_bound() -> None:
    table: TimerTable[TimerRequest] = TimerTable()
    table.set(TimerRequest(2, "keep", 1e9))
    for i in range(100_000):
        table.set(TimerRequest(3, "cycle", 1e9 + i))
        table.remove(3, "cycle")
    assert len(table) == 1
    assert len(table._heap) <= 2 * 1024 + 2
