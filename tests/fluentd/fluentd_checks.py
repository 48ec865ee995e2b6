"""Structural rules for rpcscope's Fluentd configuration.

Each rule returns a list of human-readable problems (empty when the rule holds), so the tests
can assert both that the shipped config passes and that a config breaking the rule is caught.
"""

from __future__ import annotations

import re

from fluentd_conf import Directive, effective

#: Outputs that only hand records on inside Fluentd or throw them away: nothing to buffer.
PASS_THROUGH_OUTPUTS = frozenset({"null", "relabel"})
#: Outputs that send over the network and therefore need a dead letter for undeliverable chunks.
NETWORK_OUTPUTS = frozenset({"elasticsearch", "elasticsearch_data_stream", "forward", "http"})
OVERFLOW_ACTIONS = frozenset({"block", "throw_exception", "drop_oldest_chunk"})
# Elasticsearch rejects bulk requests over http.max_content_length (100mb by default).
_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")


def size_bytes(value: str) -> int:
    m = _SIZE.match(value.strip())
    if not m:
        raise ValueError(f"not a Fluentd size: {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def matches(root: Directive) -> list[Directive]:
    return [d for d in root.walk() if d.name == "match"]


def check_buffers(root: Directive) -> list[str]:
    """Every storing <match> has a bounded file buffer, an overflow policy and bounded retries."""
    problems: list[str] = []
    for m in matches(root):
        if m.type in PASS_THROUGH_OUTPUTS:
            continue
        where = f"<match {m.arg}> @type {m.type} ({m.source})"
        buf = m.child("buffer")
        if buf is None:
            problems.append(f"{where}: no <buffer>")
            continue
        if buf.type != "file":
            problems.append(f"{where}: buffer @type is {buf.type!r}, not file")
        if "path" not in buf.params:
            problems.append(f"{where}: file buffer without path")
        if "total_limit_size" not in buf.params:
            problems.append(f"{where}: no total_limit_size")
        else:
            size_bytes(effective(buf.params["total_limit_size"]))
        action = effective(buf.params.get("overflow_action", ""))
        if action not in OVERFLOW_ACTIONS:
            problems.append(
                f"{where}: overflow_action {action!r} is not one of {sorted(OVERFLOW_ACTIONS)}"
            )
        if buf.params.get("retry_type") != "exponential_backoff":
            problems.append(f"{where}: retry_type is not exponential_backoff")
        if "retry_max_interval" not in buf.params:
            problems.append(f"{where}: no retry_max_interval (backoff would grow without a cap)")
        if buf.params.get("retry_forever") == "true" or not (
            "retry_timeout" in buf.params or "retry_max_times" in buf.params
        ):
            problems.append(f"{where}: retries are not bounded (retry_timeout / retry_max_times)")
        if (
            "chunk_limit_size" in buf.params
            and size_bytes(buf.params["chunk_limit_size"]) >= 100 * 1024**2
        ):
            problems.append(
                f"{where}: chunk_limit_size is not below Elasticsearch's 100mb request limit"
            )
    return problems


def check_secondaries(root: Directive) -> list[str]:
    """Every network output has a <secondary> secondary_file dead letter."""
    problems: list[str] = []
    for m in matches(root):
        if m.type not in NETWORK_OUTPUTS:
            continue
        sec = m.child("secondary")
        if sec is None or sec.type != "secondary_file" or "directory" not in sec.params:
            problems.append(
                f"<match {m.arg}> @type {m.type} ({m.source}): "
                "no <secondary> secondary_file with a directory"
            )
    return problems


def check_elasticsearch_outputs(root: Directive) -> list[str]:
    """Elasticsearch outputs verify TLS, use https, create into data streams by chunk keys."""
    problems: list[str] = []
    for m in matches(root):
        if not m.type.startswith("elasticsearch"):
            continue
        where = f"<match {m.arg}> ({m.source})"
        p = m.params
        if p.get("ssl_verify") != "true":
            problems.append(f"{where}: ssl_verify must be the literal true")
        if not p.get("ca_file"):
            problems.append(f"{where}: no ca_file")
        if p.get("scheme", "https") != "https":
            problems.append(f"{where}: scheme is not https")
        hosts = effective(p.get("hosts", ""))
        if not hosts or any(not h.startswith("https://") for h in hosts.split(",")):
            problems.append(f"{where}: default hosts {hosts!r} are not all https:// URLs")
        if p.get("write_operation") != "create":
            problems.append(f"{where}: data streams accept only write_operation create")
        if "password" in p and "ENV" not in p["password"]:
            problems.append(
                f"{where}: password is written in the config instead of read from the environment"
            )
        buf = m.child("buffer")
        keys = {k.strip() for k in (buf.arg if buf else "").split(",") if k.strip()}
        for name in _PLACEHOLDER.findall(p.get("index_name", "")):
            if name not in keys:
                problems.append(
                    f"{where}: index_name placeholder ${{{name}}} is not a buffer chunk key"
                )
    return problems


def check_forward_sources(root: Directive) -> list[str]:
    """Every forward input requires the shared-key handshake and TLS."""
    problems: list[str] = []
    for s in root.walk():
        if s.name != "source" or s.type != "forward":
            continue
        where = f"<source> @type forward ({s.source})"
        sec = s.child("security")
        if sec is None or not sec.params.get("shared_key") or not sec.params.get("self_hostname"):
            problems.append(f"{where}: no <security> with shared_key and self_hostname")
        tls = [c for c in s.children if c.name == "transport" and c.arg == "tls"]
        if not tls:
            problems.append(f"{where}: no <transport tls>")
        else:
            t = tls[0]
            if not t.params.get("cert_path") or not t.params.get("private_key_path"):
                problems.append(f"{where}: <transport tls> without cert_path and private_key_path")
            if t.params.get("insecure") == "true":
                problems.append(f"{where}: <transport tls> is insecure")
        if "chunk_size_limit" not in s.params:
            problems.append(f"{where}: no chunk_size_limit (unbounded request size)")
    return problems


def check_labels(root: Directive) -> list[str]:
    """Every label routed to is defined, every defined label is reachable, ids are unique."""
    problems: list[str] = []
    defined = {d.arg for d in root.children if d.name == "label"}
    referenced: set[str] = set()
    ids: dict[str, str] = {}
    for d in root.walk():
        for key in ("@label", "timeout_label"):
            if key in d.params:
                referenced.add(d.params[key])
        if "@id" in d.params:
            if d.params["@id"] in ids:
                problems.append(
                    f"@id {d.params['@id']} used twice ({ids[d.params['@id']]}, {d.source})"
                )
            ids[d.params["@id"]] = d.source
    # Fluentd routes into these two by itself.
    builtin = {"@FLUENT_LOG", "@ERROR"}
    for name in sorted(referenced - defined):
        problems.append(f"label {name} is routed to but never defined")
    for name in sorted(defined - referenced - builtin):
        problems.append(f"label {name} is defined but nothing routes to it")
    for d in root.walk():
        if d.name in {"source", "match", "filter"} and d.type and "@id" not in d.params:
            problems.append(
                f"<{d.name}> @type {d.type} ({d.source}) has no @id (metrics are labelled by it)"
            )
    return problems


_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# strftime placeholders and the resolution they give a path, as Fluentd's placeholder check uses.
_TIME_PLACEHOLDERS = {
    "%S": 1,
    "%M": 60,
    "%H": 3600,
    "%d": 86400,
    "%m": 86400 * 28,
    "%Y": 86400 * 365,
}


def _seconds(value: str) -> int:
    value = value.strip()
    if value[-1] in _TIME_UNITS:
        return int(value[:-1]) * _TIME_UNITS[value[-1]]
    return int(value)


def check_file_outputs(root: Directive) -> list[str]:
    """out_file paths have time placeholders as fine as the buffer's timekey (else no start)."""
    problems: list[str] = []
    for m in matches(root):
        if m.type != "file":
            continue
        where = f"<match {m.arg}> @type file ({m.source})"
        buf = m.child("buffer")
        if buf is None or "time" not in [k.strip() for k in buf.arg.split(",")]:
            continue
        timekey = _seconds(buf.params.get("timekey", "1d"))
        path = m.params.get("path", "")
        found = [sec for ph, sec in _TIME_PLACEHOLDERS.items() if ph in path]
        if not found:
            problems.append(f"{where}: path has no time placeholder for timekey {timekey}")
        elif timekey < min(found):
            problems.append(
                f"{where}: timekey {timekey}s is finer than the path's time placeholders"
            )
    return problems


def check_tls_version_bounds(root: Directive) -> list[str]:
    """TLS min/max versions come in pairs: Fluentd and the ES plugin refuse one alone."""
    problems: list[str] = []
    pairs = (("min_version", "max_version"), ("ssl_min_version", "ssl_max_version"))
    for d in root.walk():
        for low, high in pairs:
            if (low in d.params) != (high in d.params):
                problems.append(
                    f"<{d.name} {d.arg}> ({d.source}): {low} and {high} must be set together"
                )
    return problems


ALL_CHECKS = (
    check_tls_version_bounds,
    check_file_outputs,
    check_buffers,
    check_secondaries,
    check_elasticsearch_outputs,
    check_forward_sources,
    check_labels,
)


def all_problems(root: Directive) -> list[str]:
    return [p for check in ALL_CHECKS for p in check(root)]
