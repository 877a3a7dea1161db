"""Unit checks of the JSON gateway's pieces: Go's base64 rules, the route table, request
parsing, and the HTTP/1.1 reader (chunked bodies, limits)."""

from __future__ import annotations

import asyncio

import pytest

from datastore.gateway.routes import ROUTES, lookup
from datastore.gateway.server import (
    BadRequest,
    go_base64_error,
    parse_many,
    parse_one,
    read_request,
)


@pytest.mark.parametrize(("src", "at"), [
    # offsets as Go's base64.StdEncoding reports them (checked against etcd 3.4's gateway)
    (b"", None), (b"Zm9v", None), (b"Zg==", None), (b"Zm9v\n", None), (b"Zm\r\n9v", None),
    (b"!!!", 0), (b"Zm9", 0), (b"Zg", 0), (b"Zm9v!", 4), (b"Zm9vYg", 4), (b"Zg=", 3),
    (b"Z===", 1), (b"Zm9v====", 4), (b"Zm-v", 2), (b"Zg==Zg==", 4),
])
def test_go_base64(src: bytes, at: int | None) -> None:
    assert go_base64_error(src) == at


def test_routes_cover_etcd_paths() -> None:
    assert lookup("/v3/kv/range") == (True, ROUTES["kv/range"])
    assert lookup("/v3beta/watch")[1] is ROUTES["watch"]
    assert lookup("/v3alpha/lease/keepalive")[1] is ROUTES["lease/keepalive"]
    assert lookup("/v3/kv/nope") == (True, None)
    assert lookup("/health") == (False, None)
    assert ROUTES["watch"].kind == "bidi" and ROUTES["watch"].keep_sending
    assert ROUTES["maintenance/snapshot"].kind == "server_stream"
    assert ROUTES["maintenance/hash"].full_method == "/etcdserverpb.Maintenance/Hash"
    assert ROUTES["lock/lock"].full_method == "/v3lockpb.Lock/Lock"


def test_parse() -> None:
    r = ROUTES["kv/range"]
    m = parse_one(r, '{"key": "Zm9v", "rangeEnd": "Zm9w", "limit": "5", "extra": 1}')
    assert (m.key, m.range_end, m.limit) == (b"foo", b"fop", 5)  # type: ignore[attr-defined]
    assert parse_one(r, "  ") == r.request()
    with pytest.raises(ValueError, match="illegal base64 data at input byte 1"):
        parse_one(ROUTES["kv/txn"], '{"success": [{"request_put": {"key": "a!"}}]}')
    with pytest.raises(ValueError):
        parse_one(r, '{"key": 5}')
    with pytest.raises(ValueError):
        parse_one(r, "[" * 100_000)
    msgs = parse_many(ROUTES["lease/keepalive"], '{"ID": 1} {"ID": "2"}\n{"ID": 3} junk {"ID": 4}')
    assert [m.ID for m in msgs] == [1, 2, 3]  # type: ignore[attr-defined]


def _read(raw: bytes, max_body: int = 1024) -> object:
    async def go() -> object:
        reader = asyncio.StreamReader(limit=64 * 1024)
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_request(reader, max_body)
    return asyncio.run(go())


def test_http_reader() -> None:
    req = _read(b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert req.method == "POST" and req.body == b"{}" and req.keep_alive()  # type: ignore[attr-defined]
    req = _read(b"POST /v3/kv/put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\n{\"k\r\n4\r\ney\":\r\n3\r\n\"\"}\r\n0\r\n\r\n")
    assert req.body == b'{"key":""}'  # type: ignore[attr-defined]
    assert _read(b"") is None
    for bad in (b"GARBAGE\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", b"POST / HTTP/1.1\r\nNoColon\r\n\r\n"):
        with pytest.raises(BadRequest):
            _read(bad)
    req = _read(b"GET /health HTTP/1.0\r\n\r\n")
    assert not req.keep_alive()  # type: ignore[attr-defined]
