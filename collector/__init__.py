"""The gRPC interceptors (``rpcscope.collector``).

Users normally get interceptors from :class:`rpcscope.Scope`; these types are exported for
annotations and for composing them with other frameworks.
"""

from rpcscope.collector._client import ClientInterceptor
from rpcscope.collector._server import AioServerInterceptor, ServerInterceptor

__all__ = ["AioServerInterceptor", "ClientInterceptor", "ServerInterceptor"]
