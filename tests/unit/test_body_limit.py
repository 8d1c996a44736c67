"""The body limit holds on the bytes read, whatever the framing (Flask test client).

A server that de-chunks a `Transfer-Encoding: chunked` body marks the stream
`wsgi.input_terminated` and sends no Content-Length; werkzeug alone cut such a body at the
limit and handed the truncated bytes (often still valid JSON) to the handler.
tests/integration/test_gunicorn.py sends real chunks to real gunicorn.
"""

from __future__ import annotations

import io
import json

import pytest

from atlas.api.http import CappedStream
from tests.unit.conftest import Client

MiB = 1024 * 1024
CHUNKED = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}


def padded(doc: dict[str, object], size: int) -> bytes:
    raw = json.dumps(doc).encode()
    return raw + b" " * (size - len(raw))


def send_chunked(client: Client, method: str, path: str, body: bytes) -> object:
    return getattr(client, method)(
        path,
        input_stream=io.BytesIO(body),
        headers=CHUNKED,
        environ_overrides={"wsgi.input_terminated": True},
    )


@pytest.mark.parametrize("size", [MiB + 1, 2 * MiB, 10_000_000])
def test_chunked_body_over_the_limit_is_413_and_writes_nothing(client: Client, size: int) -> None:
    resp = send_chunked(client, "post", "/v1/services", padded({"name": "big"}, size))
    assert resp.status_code == 413  # type: ignore[attr-defined]
    assert resp.content_type == "application/problem+json"  # type: ignore[attr-defined]
    assert client.get("/v1/services/big").status_code == 404
    assert client.post("/v1/services", json={"name": "web"}).status_code == 201
    resp = send_chunked(
        client, "put", "/v1/services/web/instances/10.0.0.1:80", padded({"zone": "a"}, size)
    )
    assert resp.status_code == 413  # type: ignore[attr-defined]
    assert client.get("/v1/services/web/instances").json["items"] == []


def test_chunked_body_of_exactly_the_limit_is_read_whole(client: Client) -> None:
    resp = send_chunked(client, "post", "/v1/services", padded({"name": "exact"}, MiB))
    assert resp.status_code == 201  # type: ignore[attr-defined]


class Endless(io.RawIOBase):
    """A body that never ends; counts what was read from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        buffer[:] = b" " * len(buffer)
        self.read_bytes += len(buffer)
        return len(buffer)


def test_an_endless_body_costs_at_most_the_limit_plus_one_byte() -> None:
    source = Endless()
    with pytest.raises(Exception, match="413"):
        CappedStream(source, 1000).read()
    assert source.read_bytes == 1001
