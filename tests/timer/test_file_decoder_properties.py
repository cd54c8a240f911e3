"""Property tests of the FIFO line decoder of the named-pipe server.

What reaches the server's FIFO is a byte stream: reads end anywhere, and a
broken or hostile writer can put anything in it. Whatever it is, the decoder
must not raise, must keep at most one line's worth of bytes, and must decode
every well-formed request that a conforming writer put after the bad bytes.
"""

from __future__ import annotations

import json
import math
import select
import signal
import string
from signal import NSIG
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_expire.timer import file_based_local_timer as fbt
from pytest_expire.timer.file_based_local_timer import (
    FileTimerRequest,
    MalformedRequest,
    RequestDecoder,
    parse_request,
)

PIPE_BUF = select.PIPE_BUF
fast = settings(max_examples=150, deadline=None)

pids = st.integers(min_value=2, max_value=2**31 - 1)
times = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**15), 10**15)
signals = st.integers(min_value=-(2**31), max_value=NSIG - 1)


@st.composite
def requests(draw: st.DrawFn) -> FileTimerRequest:
    """A request that a conforming client may send (it fits in PIPE_BUF with its newline)."""
    request = FileTimerRequest(draw(pids), draw(st.text(max_size=60)), draw(times), draw(signals))
    assert len(request.to_json()) + 1 <= PIPE_BUF  # 60 characters escape to 720 bytes at most
    return request


def wire(request: FileTimerRequest) -> bytes:
    return request.to_json().encode() + b"\n"


def good_fields() -> dict[str, Any]:
    return {"version": 1, "pid": 1234, "scope_id": "s", "expiration_time": 1.5, "signal": 9}


def dumps(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields).encode()


WRONG_VALUES: dict[str, list[Any]] = {
    "version": [0, 2, "1", 1.0, True, None, [1]],
    "pid": [0, 1, -1, -4321, 2**31, 2**64, "1234", 1234.0, True, None, {}],
    "scope_id": [7, None, ["s"], {"s": 1}, True],
    "expiration_time": [True, False, None, "1.5", [1.5], 10**400],
    "signal": [NSIG, 9999, -(2**31) - 1, "SIGKILL", 9.0, True, None],
}


@st.composite
def bad_lines(draw: st.DrawFn) -> bytes:
    """A line (without newline) that is not a request."""
    kind = draw(
        st.sampled_from(
            [
                "bytes",
                "truncated",
                "oversized",
                "wrong type",
                "not a time",
                "missing key",
                "not utf-8",
                "not an object",
            ]
        )
    )
    if kind == "bytes":
        line = draw(st.binary(max_size=200))
    elif kind == "truncated":
        text = wire(draw(requests()))
        line = text[: draw(st.integers(0, len(text) - 2))]
    elif kind == "oversized":
        fields = good_fields()
        fields["scope_id"] = "x" * draw(st.integers(PIPE_BUF, 3 * PIPE_BUF))
        line = dumps(fields)
    elif kind == "wrong type":
        fields = good_fields()
        key = draw(st.sampled_from(sorted(WRONG_VALUES)))
        fields[key] = draw(st.sampled_from(WRONG_VALUES[key]))
        line = dumps(fields)
    elif kind == "not a time":
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]))
        line = dumps(good_fields()).replace(b"1.5", literal.encode())
    elif kind == "missing key":
        fields = good_fields()
        del fields[draw(st.sampled_from(sorted(fields)))]
        line = dumps(fields)
    elif kind == "not utf-8":
        line = dumps(good_fields()).replace(b'"s"', b'"\xff' + draw(st.binary(max_size=3)) + b'"')
    else:
        line = draw(st.sampled_from([b"[]", b"1", b'"x"', b"null", b"[" * 2000, b"{" * 2000]))
    return line.replace(b"\n", b"")


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets."""
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def feed_all(decoder: RequestDecoder, pieces: list[bytes]) -> list[FileTimerRequest]:
    decoded: list[FileTimerRequest] = []
    for piece in pieces:
        decoded += decoder.feed(piece)
        assert decoder.pending < PIPE_BUF
    return decoded


def assert_same(decoded: list[FileTimerRequest], expected: list[FileTimerRequest]) -> None:
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected, strict=True):
        assert (got.worker_pid, got.scope_id, got.signal, got.version) == (
            want.worker_pid,
            want.scope_id,
            want.signal,
            want.version,
        )
        # to_json/json.loads round-trips floats exactly; an int stays an int
        assert got.expiration_time == want.expiration_time
        assert type(got.expiration_time) is type(want.expiration_time)


@fast
@given(requests())
def test_a_request_round_trips(request: FileTimerRequest) -> None:
    decoded = parse_request(request.to_json().encode())
    assert decoded == request
    assert math.isfinite(decoded.expiration_time)


@fast
@given(st.binary(max_size=2 * PIPE_BUF), st.lists(st.integers(0, 2 * PIPE_BUF), max_size=6))
def test_the_decoder_never_raises_on_any_bytes(data: bytes, cuts: list[int]) -> None:
    decoded = feed_all(RequestDecoder(), chunks(data, cuts))
    assert all(isinstance(request, FileTimerRequest) for request in decoded)


@fast
@given(bad_lines())
def test_a_bad_line_is_refused(line: bytes) -> None:
    try:
        parse_request(line)
    except MalformedRequest:
        pass
    else:  # pragma: no cover - the assertion's message
        raise AssertionError(f"decoded a bad line: {line!r}")


@fast
@given(
    st.lists(st.tuples(st.lists(bad_lines(), max_size=3), requests()), min_size=1, max_size=8),
    st.lists(st.integers(0, 20_000), max_size=10),
)
def test_every_request_after_bad_lines_is_decoded(
    stream: list[tuple[list[bytes], FileTimerRequest]], cuts: list[int]
) -> None:
    data = b"".join(b"".join(bad + b"\n" for bad in bads) + wire(good) for bads, good in stream)
    decoded = feed_all(RequestDecoder(), chunks(data, cuts))
    assert_same(decoded, [good for _, good in stream])


@fast
@given(
    st.binary(min_size=1, max_size=3 * PIPE_BUF).map(lambda b: b.replace(b"\n", b"")),
    requests(),
    st.lists(st.integers(0, 4 * PIPE_BUF), max_size=6),
)
def test_a_request_glued_to_garbage_without_newline_is_decoded(
    garbage: bytes, request: FileTimerRequest, cuts: list[int]
) -> None:
    # A writer that left an incomplete line, then a conforming writer's request.
    data = garbage + wire(request) + wire(request)
    decoded = feed_all(RequestDecoder(), chunks(data, cuts))
    assert_same(decoded, [request, request])


@fast
@given(st.lists(requests(), min_size=1, max_size=200))
def test_many_requests_in_one_read(batch: list[FileTimerRequest]) -> None:
    decoder = RequestDecoder()
    assert_same(decoder.feed(b"".join(map(wire, batch))), batch)
    assert decoder.pending == 0


@fast
@given(requests(), st.integers(1, 200))
def test_a_request_split_byte_by_byte(request: FileTimerRequest, step: int) -> None:
    data = wire(request)
    decoder = RequestDecoder()
    decoded = feed_all(decoder, [data[i : i + step] for i in range(0, len(data), step)])
    assert_same(decoded, [request])


# ----------------------------------------------- the direct encoder and decoder

# Whatever a FileTimerRequest may hold, also what no client sends.
any_ints = st.integers() | st.booleans() | st.sampled_from(list(signal.Signals))
any_times = st.floats() | st.integers() | st.booleans()
any_scopes = st.text() | st.none() | st.integers() | st.lists(st.text(max_size=3), max_size=2)


@fast
@given(any_ints, any_ints, any_scopes, any_times, any_ints)
def test_to_json_is_exactly_json_dumps(
    version: Any, pid: Any, scope_id: Any, expiration_time: Any, signum: Any
) -> None:
    request = FileTimerRequest(pid, scope_id, expiration_time, signum)
    request.version = version
    fields = {
        "version": version,
        "pid": pid,
        "scope_id": scope_id,
        "expiration_time": expiration_time,
        "signal": signum,
    }
    assert request.to_json() == json.dumps(fields)


@fast
@given(pids, st.text(), times, signals)
def test_to_json_round_trips_through_json_loads(
    pid: int, scope_id: str, expiration_time: float, signum: int
) -> None:
    text = FileTimerRequest(pid, scope_id, expiration_time, signum).to_json()
    decoded = json.loads(text)
    assert decoded == {
        "version": 1,
        "pid": pid,
        "scope_id": scope_id,
        "expiration_time": expiration_time,
        "signal": signum,
    }
    assert type(decoded["expiration_time"]) is type(expiration_time)
    assert text.isascii()


# Scopes that JSON writes without escapes (printable ASCII but " and \).
plain_scopes = st.text(
    alphabet=st.sampled_from([c for c in string.printable if c.isprintable() and c not in '"\\']),
    max_size=60,
)


# The times a client's line holds without the JSON parser: floats, ints of up to 15 digits.
direct_times = st.floats(allow_nan=False, allow_infinity=False) | st.integers(
    -(10**15) + 1, 10**15 - 1
)


@fast
@given(pids, plain_scopes, direct_times, signals)
def test_a_clients_line_is_decoded_without_the_json_parser(
    pid: int, scope_id: str, expiration_time: float, signum: int
) -> None:
    request = FileTimerRequest(pid, scope_id, expiration_time, signum)
    assert fbt._parse_canonical(request.to_json().encode()) == request


def outcome(parse: Any, line: bytes) -> tuple[Any, ...]:
    """What ``parse`` makes of ``line``: the request's fields and their types, or a refusal."""
    try:
        request = parse(line)
    except MalformedRequest:
        return ("refused",)
    fields = (request.worker_id, request.scope_id, request.expiration_time, request.signal)
    return (*fields, *map(type, fields))


# The bytes the canonical form is made of, and a few it must refuse.
MUTATION_BYTES = b'0123456789-+.eE"\\ {}:,\x00\x1f\x7f\xc3\xa9\xffa'


@st.composite
def near_canonical_lines(draw: st.DrawFn) -> bytes:
    """A client's line with a few bytes replaced, inserted or deleted."""
    line = bytearray(draw(requests()).to_json().encode())
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(line)))
        what = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from(MUTATION_BYTES))
        if what == "insert" or where == len(line):
            line.insert(where, byte)
        elif what == "replace":
            line[where] = byte
        else:
            del line[where]
    return bytes(line)


# Texts of the canonical form's fields around what each one accepts.
numberish = st.from_regex(rb"-?[0-9]{0,11}(\.[0-9]{0,3})?([eE][-+]?[0-9]{0,4})?", fullmatch=True)
EDGES = {
    "version": [b"01", b"1.0", b"2", b"true", b"-1", b'"1"'],
    "pid": [b"1", b"0", b"01", b"0123", b"-5", b"2147483648", b"99999999999", b"1.0", b"1e3"],
    "scope_id": [b'"\\""', b'"\\u00e9"', b'"\xc3\xa9"', b'"\xff"', b'"a\tb"', b'"\x7f"', b"7"],
    "expiration_time": [
        *(b"1.", b".5", b"1.e5", b"1e", b"1.5e", b"1e+", b"-", b"1e400", b"01.5", b"-01.5"),
        *(b"5", b"-0", b"NaN", b"Infinity", b"1.5E3", b"1.5e-3", b"-0.0", b"1E+2", b"-1"),
        *(b"999999999999999", b"1000000000000000", b"1" + b"0" * 400, b"-" + b"9" * 309),
    ],
    "signal": [
        *(str(NSIG).encode(), str(NSIG - 1).encode(), b"-2147483648", b"-2147483649"),
        *(b"01", b"-0", b"1.0", b"true"),
    ],
}


@st.composite
def canonical_like_lines(draw: st.DrawFn) -> bytes:
    """A client's line, with one field (or none) replaced by a text near its edges."""
    request = FileTimerRequest(draw(pids), draw(plain_scopes), draw(direct_times), draw(signals))
    fields: dict[str, bytes] = {
        "version": b"1",
        "pid": b"%d" % request.worker_pid,
        "scope_id": json.dumps(request.scope_id).encode(),
        "expiration_time": json.dumps(request.expiration_time).encode(),
        "signal": b"%d" % request.signal,
    }
    broken = draw(st.sampled_from([None, *fields]))
    if broken is not None:
        fields[broken] = draw(st.sampled_from(EDGES[broken]) | numberish | st.binary(max_size=6))
    return (
        b"{" + b", ".join(b'"%s": %s' % (key.encode(), text) for key, text in fields.items()) + b"}"
    )


@settings(max_examples=1500, deadline=None)
@given(canonical_like_lines())
def test_the_direct_decoder_agrees_with_the_json_parser_on_every_field(line: bytes) -> None:
    assert outcome(parse_request, line) == outcome(fbt._parse_json, line)


@settings(max_examples=500, deadline=None)
@given(near_canonical_lines() | bad_lines().filter(lambda line: len(line) < PIPE_BUF))
def test_the_direct_decoder_agrees_with_the_json_parser(line: bytes) -> None:
    assert outcome(parse_request, line) == outcome(fbt._parse_json, line)
