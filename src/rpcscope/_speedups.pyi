from typing import Any

class LineEncoder:
    def __init__(
        self,
        encoder: Any,
        record_type: type,
        statics: dict[Any, Any],
        peers: dict[Any, Any],
        span_ids: Any,
        trace_ids: Any,
        parse_traceparent: Any,
        traceparent_of: Any,
        allow: dict[str, bool],
        on_error: Any,
    ) -> None: ...
    def line(self, record: Any) -> str: ...

class Folder:
    def __init__(
        self,
        aggregate_type: type,
        record_type: type,
        info_type: type,
        bounds: list[float],
        code_index: dict[str, int],
        exemplars: bool,
        layout: tuple[int, int, int, int, int, int],
    ) -> None: ...
    def fold(self, pending: Any, n: int, out: list[Any] | None, components: Any) -> int: ...

class ServerPath:
    def __init__(
        self,
        pipeline: Any,
        record_type: type,
        info_type: type,
        deque_type: type,
        deferred_type: type,
        tracing_type: type,
        current_ids: Any,
        next_call_number: Any,
        python_start: Any,
        python_finish: Any,
        aio: bool,
        ok: Any,
        cancelled: str,
    ) -> None: ...
    def start(self, info: Any, context: Any, metadata: Any = None,
              own_task: bool = False) -> Any: ...
    def finish(self, record: Any, context: Any, error: BaseException | None,
               unary_out: bool = False) -> None: ...
