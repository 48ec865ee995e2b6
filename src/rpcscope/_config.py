"""Configuration: keyword arguments > ``RPCSCOPE_*`` environment variables > YAML file > defaults.

Every problem is reported at construction, naming the key, where it came from, and the fix —
never at the first RPC. Unknown keys are errors (a misspelt option silently ignored is how
telemetry goes missing in production).
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

import yaml

from rpcscope import schema

#: Environment variables, one per option. ``RPCSCOPE_DISABLED`` is the kill switch.
ENV_CONFIG_FILE: Final = "RPCSCOPE_CONFIG"
ENV_DISABLED: Final = "RPCSCOPE_DISABLED"
ENV_SERVICE: Final = "RPCSCOPE_SERVICE"
ENV_SERVICE_VERSION: Final = "RPCSCOPE_SERVICE_VERSION"
ENV_ENVIRONMENT: Final = "RPCSCOPE_ENVIRONMENT"
ENV_ACCESS_LOG: Final = "RPCSCOPE_ACCESS_LOG"
ENV_METRICS: Final = "RPCSCOPE_METRICS"
ENV_TRACE: Final = "RPCSCOPE_TRACE"
ENV_EXEMPLARS: Final = "RPCSCOPE_EXEMPLARS"
ENV_BUCKETS: Final = "RPCSCOPE_HISTOGRAM_BUCKETS"
ENV_EXCLUDE: Final = "RPCSCOPE_EXCLUDE_SERVICES"
ENV_LOG_METADATA: Final = "RPCSCOPE_LOG_METADATA"
ENV_LOG_CLIENT_CALLS: Final = "RPCSCOPE_LOG_CLIENT_CALLS"
ENV_MAX_METHODS: Final = "RPCSCOPE_MAX_METHODS"
ENV_LOG_QUEUE_SIZE: Final = "RPCSCOPE_LOG_QUEUE_SIZE"
ENV_BATCH_INTERVAL: Final = "RPCSCOPE_BATCH_INTERVAL"

_ENV: Final[dict[str, str]] = {
    "disabled": ENV_DISABLED,
    "service": ENV_SERVICE,
    "service_version": ENV_SERVICE_VERSION,
    "environment": ENV_ENVIRONMENT,
    "access_log": ENV_ACCESS_LOG,
    "metrics": ENV_METRICS,
    "trace": ENV_TRACE,
    "exemplars": ENV_EXEMPLARS,
    "histogram_buckets": ENV_BUCKETS,
    "exclude_services": ENV_EXCLUDE,
    "log_metadata": ENV_LOG_METADATA,
    "log_client_calls": ENV_LOG_CLIENT_CALLS,
    "max_methods": ENV_MAX_METHODS,
    "log_queue_size": ENV_LOG_QUEUE_SIZE,
    "batch_interval": ENV_BATCH_INTERVAL,
}


class ConfigError(ValueError):
    """Invalid rpcscope configuration; the message names the key, the source, and the fix."""


@dataclass(frozen=True)
class Config:
    """Validated options. Build with :meth:`Config.load`; ``Scope(**kwargs)`` does it for you."""

    #: ``service.name`` in logs; falls back to ``OTEL_SERVICE_NAME``, then ``unknown_service``.
    service: str = "unknown_service"
    service_version: str | None = None
    environment: str | None = None
    #: Kill switch: interceptors become no-ops (empty lists), nothing is recorded.
    disabled: bool = False
    metrics: bool = True
    trace: bool = True
    exemplars: bool = True
    #: ``"stdout"`` (default), ``"off"``, a file path, or a ``LogSink`` object.
    access_log: Any = "stdout"
    log_client_calls: bool = True
    histogram_buckets: tuple[float, ...] = schema.DEFAULT_BUCKETS
    exclude_services: tuple[str, ...] = schema.DEFAULT_EXCLUDED_SERVICES
    #: Extra predicate on the full method path (``/pkg.Svc/Method``); False excludes the call.
    method_filter: Callable[[str], bool] | None = None
    #: Request metadata keys copied into the access log (credentials are redacted regardless).
    log_metadata: tuple[str, ...] = ("user-agent", "x-request-id")
    #: Distinct methods per side before new ones collapse into ``unknown`` (cardinality guard).
    max_methods: int = 1000
    log_queue_size: int = 10_000
    #: Seconds between the batcher's rounds (fold into the metrics, hand logs to the sinks).
    batch_interval: float = 0.2
    #: prometheus_client registry; None → prometheus_client's global ``REGISTRY`` (what
    #: ``start_http_server()`` serves), as py-grpc-prometheus and OpenTelemetry's exporter do.
    registry: Any = None
    #: OpenTelemetry ``TracerProvider`` for spans; None → the global provider (spans only when
    #: an SDK provider is configured; otherwise W3C trace ids without spans).
    tracer_provider: Any = None
    #: Where this configuration came from, for error messages. Not an option.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None,
             environ: Mapping[str, str] | None = None, **kwargs: Any) -> Config:
        env = os.environ if environ is None else environ
        valid = [f.name for f in fields(cls) if f.name != "sources"]
        merged: dict[str, Any] = {}
        sources: dict[str, str] = {}

        path = config_file if config_file is not None else env.get(ENV_CONFIG_FILE)
        if path:
            for key, value in _read_yaml(os.fspath(path)).items():
                _check_key(key, valid, f"config file {os.fspath(path)}")
                merged[key] = value
                sources[key] = f"config file {os.fspath(path)}"
        for key, var in _ENV.items():
            if var in env and env[var] != "":
                merged[key] = _from_env(key, var, env[var])
                sources[key] = f"environment variable {var}"
        if "service" not in merged and env.get("OTEL_SERVICE_NAME"):
            merged["service"] = env["OTEL_SERVICE_NAME"]
            sources["service"] = "environment variable OTEL_SERVICE_NAME"
        for key, value in kwargs.items():
            _check_key(key, valid, "Scope() keyword arguments")
            merged[key] = value
            sources[key] = f"keyword argument {key}="
        return _validate(cls(**merged, sources=sources))


def _check_key(key: Any, valid: Sequence[str], where: str) -> None:
    if key in valid:
        return
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"unknown option {key!r} in {where}: {hint}valid options are {', '.join(sorted(valid))}"
    )


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(
            f"config file {path!r} (from {ENV_CONFIG_FILE} or config_file=) cannot be read: "
            f"{e.strerror}; fix: point it at an existing YAML file or unset it"
        ) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path!r} must hold a mapping of options (e.g. 'service: checkout'), "
            f"got {type(data).__name__}"
        )
    # Accept an optional top-level 'rpcscope:' section so the file can be shared.
    inner = data.get("rpcscope", data)
    if not isinstance(inner, dict):
        raise ConfigError(f"config file {path!r}: 'rpcscope' must be a mapping of options")
    return inner


_BOOL_TRUE: Final = frozenset(("1", "true", "yes", "on"))
_BOOL_FALSE: Final = frozenset(("0", "false", "no", "off"))
_BOOL_KEYS: Final = frozenset(
    ("disabled", "metrics", "trace", "exemplars", "log_client_calls")
)


def _from_env(key: str, var: str, raw: str) -> Any:
    value = raw.strip()
    if key in _BOOL_KEYS:
        if value.lower() in _BOOL_TRUE:
            return True
        if value.lower() in _BOOL_FALSE:
            return False
        raise ConfigError(f"{var}={raw!r} is not a boolean; fix: set {var} to true or false")
    if key in ("max_methods", "log_queue_size"):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not an integer; fix: e.g. {var}=1000") from None
    if key == "batch_interval":
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a number of seconds; "
                              f"fix: e.g. {var}=0.2") from None
    if key == "histogram_buckets":
        try:
            return tuple(float(x) for x in value.split(",") if x.strip())
        except ValueError:
            raise ConfigError(
                f"{var}={raw!r} is not a comma-separated list of seconds; "
                f"fix: e.g. {var}=0.005,0.01,0.1,1"
            ) from None
    if key in ("exclude_services", "log_metadata"):
        return tuple(x.strip() for x in value.split(",") if x.strip())
    return value


def _validate(cfg: Config) -> Config:
    src = cfg.sources

    def where(key: str) -> str:
        return src.get(key, "default")

    def fail(key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"invalid option {key!r} (from {where(key)}): {problem}; fix: {fix}")

    if not isinstance(cfg.service, str) or not cfg.service.strip():
        raise fail("service", "must be a non-empty string", "Scope(service='checkout') or "
                   f"{ENV_SERVICE}=checkout")
    for key in ("service_version", "environment"):
        value = getattr(cfg, key)
        if value is not None and not isinstance(value, str):
            raise fail(key, f"must be a string, got {type(value).__name__}", f"quote it: '{value}'")
    for key in _BOOL_KEYS:
        if not isinstance(getattr(cfg, key), bool):
            raise fail(key, f"must be true or false, got {getattr(cfg, key)!r}",
                       f"{key}: true  (or false)")

    buckets = cfg.histogram_buckets
    try:
        buckets = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise fail("histogram_buckets", f"must be a list of numbers (seconds), got {buckets!r}",
                   "e.g. [0.005, 0.01, 0.1, 1]") from None
    if not buckets or any(not math.isfinite(b) or b <= 0 for b in buckets):
        raise fail("histogram_buckets", f"must be positive, finite seconds, got {list(buckets)}",
                   "drop zero/negative/inf values (+Inf is added automatically)")
    if any(b >= c for b, c in itertools.pairwise(buckets)):
        raise fail("histogram_buckets", f"must be strictly increasing, got {list(buckets)}",
                   f"sort them: {sorted(set(buckets))}")

    for key in ("exclude_services", "log_metadata"):
        value = getattr(cfg, key)
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise fail(key, f"must be a list of strings, got {value!r}", f"{key}: [a, b]")

    for key, low in (("max_methods", 1), ("log_queue_size", 1)):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise fail(key, f"must be an integer >= {low}, got {value!r}", f"{key}: 1000")

    interval = cfg.batch_interval
    if (isinstance(interval, bool) or not isinstance(interval, int | float)
            or not math.isfinite(interval) or not 0.001 <= interval <= 60):
        raise fail("batch_interval", f"must be seconds between 0.001 and 60, got {interval!r}",
                   "batch_interval: 0.2")

    if cfg.method_filter is not None and not callable(cfg.method_filter):
        raise fail("method_filter", "must be a callable taking '/pkg.Service/Method'",
                   "method_filter=lambda m: not m.startswith('/internal.')")

    access_log = cfg.access_log
    if isinstance(access_log, os.PathLike):
        access_log = os.fspath(access_log)
    if isinstance(access_log, str):
        if not access_log.strip():
            raise fail("access_log", "is empty", "use 'stdout', 'off', or a file path")
        if access_log not in ("stdout", "off"):
            parent = os.path.dirname(os.path.abspath(access_log))
            if not os.path.isdir(parent):
                raise fail("access_log", f"directory {parent!r} does not exist",
                           "create it, or use 'stdout' / 'off'")
    elif access_log is not None and not hasattr(access_log, "write"):
        raise fail("access_log", f"must be 'stdout', 'off', a path or a LogSink, got "
                   f"{type(access_log).__name__}", "access_log='stdout'")
    if access_log is None:
        access_log = "off"

    registry = cfg.registry
    if registry is not None and not hasattr(registry, "register"):
        raise fail("registry", f"must be a prometheus_client CollectorRegistry, got "
                   f"{type(registry).__name__}", "registry=prometheus_client.CollectorRegistry()")

    provider = cfg.tracer_provider
    if provider is not None and not callable(getattr(provider, "get_tracer", None)):
        raise fail("tracer_provider", f"must be an OpenTelemetry TracerProvider, got "
                   f"{type(provider).__name__}",
                   "tracer_provider=opentelemetry.sdk.trace.TracerProvider()")

    return replace(
        cfg,
        service=cfg.service.strip(),
        histogram_buckets=buckets,
        exclude_services=tuple(cfg.exclude_services),
        log_metadata=tuple(k.lower() for k in cfg.log_metadata),
        access_log=access_log,
    )
