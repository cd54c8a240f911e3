"""Properties of the Unix-socket pair's request decoder, on any bytes a pipe may hold.

The decoder must never raise, must drop a malformed message alone, must stop
at an impossible length (nothing after it can be framed), must keep an
incomplete message for the next read, and must give back exactly what the
client's encoders put in.
"""

from __future__ import annotations

import math
import signal

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_expire.timer.unix_socket_timer import (
    _HEADER,
    _HEADER_SIZE,
    _MAX_MESSAGE,
    MAX_SCOPE_BYTES,
    _arming_request,
    _decode,
    _Decoded,
    _encode_release,
)

SETTINGS = settings(max_examples=150, deadline=None)

Request = tuple[str, float, int]

# Short scopes, and one as long as the longest four-byte characters allow.
scopes = st.text(max_size=40) | st.just("\U0001f600" * (MAX_SCOPE_BYTES // 4))
# Every time a client may send: 0 up to the largest double, and inf ("never").
times = st.floats(min_value=0.0, allow_nan=False)
signals = st.integers(min_value=-(2**31), max_value=signal.NSIG - 1)
acquires = st.tuples(scopes, times, signals)
releases = st.builds(lambda scope: (scope, -1.0, 0), scopes)
requests = st.lists(acquires | releases, max_size=12)


def encode(request: Request) -> bytes:
    scope, expiration_time, signum = request
    if expiration_time < 0:
        return _encode_release(scope.encode())
    return _arming_request(scope.encode(), expiration_time, signum)[0]


def stream(batch: list[Request]) -> bytes:
    return b"".join(encode(request) for request in batch)


def raw(op: int, expiration_time: float, signum: int, scope: bytes) -> bytes:
    return _HEADER.pack(_HEADER_SIZE + len(scope), op, expiration_time, signum) + scope


def check_invariants(data: bytes, decoded: _Decoded) -> None:
    assert 0 <= decoded.consumed <= len(data)
    for scope, expiration_time, signum in decoded.requests:
        assert isinstance(scope, str)
        assert len(scope.encode()) <= MAX_SCOPE_BYTES
        assert expiration_time >= 0 or (expiration_time, signum) == (-1.0, 0)
        assert signum < signal.NSIG
    if not decoded.broken:
        # What is left is the start of a message still being written.
        rest = data[decoded.consumed :]
        if len(rest) >= _HEADER_SIZE:
            assert _HEADER.unpack_from(rest)[0] > len(rest)


@SETTINGS
@given(requests)
def test_well_formed_requests_decode_to_what_was_encoded(batch: list[Request]) -> None:
    data = stream(batch)
    assert _decode(data) == _Decoded(batch, [], len(data), False)


@SETTINGS
@given(requests, st.data())
def test_a_read_may_end_anywhere(batch: list[Request], data: st.DataObject) -> None:
    whole = stream(batch)
    cut = data.draw(st.integers(0, len(whole)), label="cut")
    first = _decode(whole[:cut])
    assert not first.broken and not first.problems
    check_invariants(whole[:cut], first)
    second = _decode(whole[first.consumed :])
    assert first.requests + second.requests == batch
    assert first.consumed + second.consumed == len(whole)


@SETTINGS
@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    check_invariants(data, _decode(data))


@SETTINGS
@given(requests, st.binary(min_size=1, max_size=64), st.data())
def test_overwritten_bytes_never_raise(
    batch: list[Request], junk: bytes, data: st.DataObject
) -> None:
    whole = stream(batch)
    at = data.draw(st.integers(0, len(whole)), label="at")
    mangled = whole[:at] + junk + whole[at + len(junk) :]
    check_invariants(mangled, _decode(mangled))


bad_messages = st.one_of(
    st.builds(
        lambda op, scope: raw(op, 1.0, 9, scope.encode()),
        st.integers(0, 255).filter(lambda op: op not in (1, 2)),
        scopes,
    ),
    st.builds(lambda scope: raw(1, math.nan, 9, scope.encode()), scopes),
    st.builds(
        lambda when, scope: raw(1, when, 9, scope.encode()),
        st.floats(max_value=-1e-300, allow_nan=False),
        scopes,
    ),
    st.builds(
        lambda signum, scope: raw(1, 1.0, signum, scope.encode()),
        st.integers(signal.NSIG, 2**31 - 1),
        scopes,
    ),
    st.builds(
        lambda op, scope: raw(op, 1.0, 9, scope),
        st.sampled_from([1, 2]),
        st.binary(min_size=1, max_size=40).filter(lambda b: not _is_utf8(b)),
    ),
)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@SETTINGS
@given(requests, bad_messages, requests)
def test_a_malformed_message_costs_only_itself(
    before: list[Request], bad: bytes, after: list[Request]
) -> None:
    data = stream(before) + bad + stream(after)
    decoded = _decode(data)
    assert decoded.requests == before + after
    assert len(decoded.problems) == 1
    assert (decoded.consumed, decoded.broken) == (len(data), False)


@SETTINGS
@given(
    requests,
    st.integers(0, _HEADER_SIZE - 1) | st.integers(_MAX_MESSAGE + 1, 2**16 - 1),
    st.binary(max_size=100),
)
def test_an_impossible_length_stops_decoding_where_it_is(
    before: list[Request], length: int, tail: bytes
) -> None:
    head = stream(before)
    data = head + _HEADER.pack(length, 1, 1.0, 9) + tail
    decoded = _decode(data)
    assert decoded.requests == before
    assert (decoded.consumed, decoded.broken) == (len(head), True)
    assert "impossible message length" in decoded.problems[-1]


def test_the_longest_scope_fits_and_a_longer_one_cannot_be_framed() -> None:
    longest = "x" * MAX_SCOPE_BYTES
    message, _ = _arming_request(longest.encode(), math.inf, 9)
    assert len(message) == _MAX_MESSAGE
    assert _decode(message) == _Decoded([(longest, math.inf, 9)], [], _MAX_MESSAGE, False)
    too_long = raw(1, 1.0, 9, b"x" * (MAX_SCOPE_BYTES + 1))
    assert _decode(too_long).broken


@SETTINGS
@given(st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=3), st.none()))
def test_the_client_accepts_exactly_the_times_the_server_accepts(value: object) -> None:
    try:
        request, deadline = _arming_request(b"s", value, 9)
    except (TypeError, ValueError):
        assert isinstance(value, (bool, str, type(None))) or math.isnan(value)  # type: ignore[arg-type]
        return
    decoded = _decode(request)
    if value < 0:  # type: ignore[operator]  # a negative time: the client sends a release
        assert (decoded.requests, deadline) == ([("s", -1.0, 0)], math.inf)
    else:
        assert decoded.requests == [("s", deadline, 9)]
