"""A test service built from generic handlers (bytes in, bytes out), every RPC kind, sync and aio.

The request payload is a command, so one servicer covers every outcome the tests need:
``ok``, ``abort:<CODE>``, ``raise``, ``sleep:<seconds>``, ``setcode:<CODE>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

SERVICE = "test.v1.Echo"
METHODS = {
    "Unary": "unary",
    "ServerStream": "server_stream",
    "ClientStream": "client_stream",
    "Bidi": "bidi_stream",
}
STREAM_LEN = 3


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"


def _act(command: bytes, context: Any) -> bytes:
    text = command.decode()
    if text.startswith("abort:"):
        context.abort(getattr(grpc.StatusCode, text[6:]), f"aborted with {text[6:]}")
    if text == "raise":
        raise RuntimeError("boom from handler")
    if text.startswith("sleep:"):
        time.sleep(float(text[6:]))
    if text.startswith("setcode:"):
        context.set_code(getattr(grpc.StatusCode, text[8:]))
        context.set_details("set without raising")
    return b"reply:" + command


def unary(request: bytes, context: Any) -> bytes:
    return _act(request, context)


def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
    for i in range(STREAM_LEN):
        if i == 1:
            _act(request, context)
        yield b"%d" % i


def client_stream(requests: Iterator[bytes], context: Any) -> bytes:
    last = b"ok"
    for r in requests:
        last = r
    return _act(last, context)


def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for r in requests:
        yield _act(r, context)


def sync_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


async def _aact(command: bytes, context: Any) -> bytes:
    text = command.decode()
    if text.startswith("abort:"):
        await context.abort(getattr(grpc.StatusCode, text[6:]), f"aborted with {text[6:]}")
    if text == "raise":
        raise RuntimeError("boom from handler")
    if text.startswith("sleep:"):
        await asyncio.sleep(float(text[6:]))
    if text.startswith("setcode:"):
        context.set_code(getattr(grpc.StatusCode, text[8:]))
        context.set_details("set without raising")
    return b"reply:" + command


async def aunary(request: bytes, context: Any) -> bytes:
    return await _aact(request, context)


async def aserver_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(STREAM_LEN):
        if i == 1:
            await _aact(request, context)
        yield b"%d" % i


async def aclient_stream(requests: Any, context: Any) -> bytes:
    last = b"ok"
    async for r in requests:
        last = r
    return await _aact(last, context)


async def abidi(requests: Any, context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        yield await _aact(r, context)


def aio_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(aunary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(aserver_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(aclient_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(abidi),
    })
