"""The call core and the gRPC interceptors (``rpcscope.collector``).

Users normally get interceptors from :class:`rpcscope.Scope`; these names are exported for
composition with other frameworks and for type annotations.
"""

from rpcscope.collector._client import ClientInterceptor
from rpcscope.collector._core import CallRecord
from rpcscope.collector._server import AioServerInterceptor, ServerInterceptor

__all__ = ["AioServerInterceptor", "CallRecord", "ClientInterceptor", "ServerInterceptor"]
