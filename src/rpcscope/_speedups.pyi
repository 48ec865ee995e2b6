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
