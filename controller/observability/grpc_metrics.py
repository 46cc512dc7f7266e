"""A gRPC server interceptor that counts Sync streams, enrollments and applies by outcome.

Owns the mapping from an RPC's outcome (gRPC status, response) to the label values in metrics.py.
Observing at the server boundary keeps the services themselves free of metric calls; it must not change
a request, a response or a status: every wrapper re-raises what the handler raised and returns (or
yields) exactly what it returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from meshsec.controller.observability import metrics as m

SYNC = "/meshsec.v1.AgentService/Sync"
ENROLL = "/meshsec.v1.AgentService/Enroll"
APPLY = "/meshsec.v1.AdminService/Apply"


def _code(context: grpc.aio.ServicerContext, raised: BaseException | None) -> grpc.StatusCode:
    code = None
    try:
        code = context.code()
    except Exception:  # older grpcio: code() not implemented on the aio context
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpcio versions report the raw integer
        for sc in grpc.StatusCode:
            if sc.value[0] == code:
                return sc
    return grpc.StatusCode.UNKNOWN if raised is not None else grpc.StatusCode.OK


def enroll_result(code: grpc.StatusCode) -> str:
    if code == grpc.StatusCode.OK:
        return m.ENROLL_OK
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return m.ENROLL_BAD_TOKEN
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return m.ENROLL_INVALID
    return m.ENROLL_ERROR


def apply_result(code: grpc.StatusCode, request: Any, response: Any) -> str:
    if code == grpc.StatusCode.OK:
        if response is not None and len(getattr(response, "errors", ())):
            return m.APPLY_INVALID
        return m.APPLY_DRY_RUN if getattr(request, "dry_run", False) else m.APPLY_OK
    if code == grpc.StatusCode.ABORTED:
        return m.APPLY_CONFLICT
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return m.APPLY_DENIED
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return m.APPLY_INVALID
    return m.APPLY_ERROR


def _unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    record: Callable[[grpc.StatusCode, Any, Any], None],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            response = await behavior(request, context)
        except BaseException as exc:
            record(_code(context, exc), request, None)
            raise
        record(_code(context, None), request, response)
        return response

    return wrapper


def _sync_stream(
    behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    """An agent counts as connected from its first Sync message until its stream ends."""

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        connected = False
        result: Any = behavior(request, context)
        if not hasattr(result, "__aiter__"):  # a handler writing with context.write(): nothing to count
            await result
            return
        try:
            async for response in result:
                if not connected:
                    connected = True
                    m.CONNECTED_AGENTS.inc()
                    m.SYNC_STREAMS_TOTAL.inc()
                yield response
        finally:
            if connected:
                m.CONNECTED_AGENTS.dec()

    return wrapper


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Wraps AgentService.Sync/Enroll and AdminService.Apply; every other method passes untouched."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in (SYNC, ENROLL, APPLY):
            return handler
        ser = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if method == SYNC and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_sync_stream(handler.unary_stream), **ser)
        if method == ENROLL and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(
                    handler.unary_unary,
                    lambda code, _req, _resp: m.ENROLLMENTS_TOTAL.labels(enroll_result(code)).inc(),
                ),
                **ser,
            )
        if method == APPLY and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(
                    handler.unary_unary,
                    lambda code, req, resp: m.APPLIES_TOTAL.labels(apply_result(code, req, resp)).inc(),
                ),
                **ser,
            )
        return handler
