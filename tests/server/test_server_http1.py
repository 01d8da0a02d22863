"""The upstream HTTP/1.1 client against a raw TCP server that answers exactly what each test scripts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from server import http1


class Scripted:
    """A TCP server: for each request it reads the head (and body), then writes ``answer(n)`` (n counts requests)."""

    def __init__(self, answer: Callable[[int], bytes | None], *, close_after: bool = False) -> None:
        self.answer, self.close_after = answer, close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_peer = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answer(len(self.requests))
                if answer is None:  # stall, then notice when the client goes away
                    await reader.read()
                    self.closed_by_peer.set()
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_peer.set()
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), b"".join(extra), body)


async def test_content_length_and_keep_alive():
    server = Scripted(lambda n: ok(b'{"n": %d}' % n))
    async with server as url:
        pool = http1.Pool(url, headers={"Authorization": "Bearer up"})
        first = await pool.request("POST", "chat/completions", b'{"a": 1}')
        second = await pool.request("GET", "models")
        await pool.aclose()
    assert (first.status, first.body, second.body) == (200, b'{"n": 1}', b'{"n": 2}')
    assert server.connections == 1  # kept alive
    assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Authorization: Bearer up\r\n" in server.requests[0] and server.requests[0].endswith(b'{"a": 1}')
    assert b"Accept-Encoding: identity" in server.requests[1]


async def test_chunked_lines_across_chunk_edges_and_trailers():
    body = b"data: one\r\n\r\ndata: t" + b"wo\n\ndata: [DONE]"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:7], body[7:20], body[20:])) + b"0\r\nX: y\r\n\r\n"
    server = Scripted(lambda n: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    async with server as url:
        pool = http1.Pool(url)
        response = await pool.stream("POST", "x", b"{}")
        lines = [line async for line in response.lines()]
        await response.aclose()
        again = await pool.request("GET", "x")  # the connection was read to its end: reused
        await pool.aclose()
    assert lines == ["data: one", "", "data: two", "", "data: [DONE]"]
    assert again.status == 200 and server.connections == 1


async def test_read_to_close_and_interim_answers():
    server = Scripted(
        lambda n: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nbusy", close_after=True
    )
    async with server as url:
        pool = http1.Pool(url)
        response = await pool.request("GET", "x")
        await pool.aclose()
    assert (response.status, response.reason, response.body) == (503, "Busy", b"busy")


async def test_a_stale_kept_alive_connection_is_retried_once():
    server = Scripted(lambda n: ok(b"fine"), close_after=True)  # closes after every answer, without saying so
    async with server as url:
        pool = http1.Pool(url)
        assert (await pool.request("GET", "x")).body == b"fine"
        await asyncio.sleep(0.05)
        assert (await pool.request("GET", "x")).body == b"fine"
        await pool.aclose()
    assert server.connections == 2


async def test_abandoning_a_stream_closes_its_connection():
    server = Scripted(
        lambda n: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello\n\r\n" if n == 1 else None
    )
    async with server as url:
        pool = http1.Pool(url)
        response = await pool.stream("POST", "x", b"{}")
        async for _ in response.lines():
            break
        await response.aclose()
        await asyncio.wait_for(server.closed_by_peer.wait(), 5)
        await pool.aclose()


async def test_errors():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = http1.Pool(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(http1.ConnectError):
        await pool.request("GET", "x")
    for answer in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"):
        async with Scripted(lambda n, a=answer: a, close_after=True) as url:
            pool = http1.Pool(url)
            with pytest.raises(http1.ProtocolError):
                await pool.request("GET", "x")
            await pool.aclose()
    with pytest.raises(ValueError):
        http1.Pool("ftp://host/v1")


async def test_a_timeout_leaves_the_pool_usable():
    server = Scripted(lambda n: None if n == 1 else ok(b"later"))
    async with server as url:
        pool = http1.Pool(url, max_connections=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.request("GET", "slow")
        assert (await pool.request("GET", "x")).body == b"later"  # the slot came back, on a new connection
        await pool.aclose()
