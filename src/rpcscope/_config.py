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
    #: Fluentd Forward shipper: ``host:port``, ``tls://host:port``, ``[v6]:port``,
    #: ``unix:///path``, or a comma-separated failover list; None → off.
    fluentd: str | None = None
    #: Secrets: kept out of ``repr(config)`` (and so out of logs and error reports).
    fluentd_shared_key: str | None = field(default=None, repr=False)
    fluentd_username: str | None = None
    fluentd_password: str | None = field(default=None, repr=False)
    fluentd_tls_ca: str | None = None
    fluentd_tls_cert: str | None = None
    fluentd_tls_key: str | None = None
    #: Skip certificate and hostname checks (explicit opt-in, for tests only).
    fluentd_tls_insecure: bool = False
    #: Where records go when Fluentd is unreachable and memory is full; replayed on restart.
    fluentd_spill_dir: str | None = None
    fluentd_access_tag: str = "rpcscope.access"
    fluentd_app_tag: str = "rpcscope.app"
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
        _load_forward_env(env, merged, sources)
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

    cfg = _validate_forward(cfg, fail)
    return replace(
        cfg,
        service=cfg.service.strip(),
        histogram_buckets=buckets,
        exclude_services=tuple(cfg.exclude_services),
        log_metadata=tuple(k.lower() for k in cfg.log_metadata),
        access_log=access_log,
    )


# --- Fluentd Forward shipper options (rpcscope.exporters._forward) ---------------------------

ENV_FLUENTD: Final = "RPCSCOPE_FLUENTD"
ENV_FLUENTD_SHARED_KEY: Final = "RPCSCOPE_FLUENTD_SHARED_KEY"
ENV_FLUENTD_USERNAME: Final = "RPCSCOPE_FLUENTD_USERNAME"
ENV_FLUENTD_PASSWORD: Final = "RPCSCOPE_FLUENTD_PASSWORD"  # noqa: S105 - a variable name
ENV_FLUENTD_TLS_CA: Final = "RPCSCOPE_FLUENTD_TLS_CA"
ENV_FLUENTD_TLS_CERT: Final = "RPCSCOPE_FLUENTD_TLS_CERT"
ENV_FLUENTD_TLS_KEY: Final = "RPCSCOPE_FLUENTD_TLS_KEY"
ENV_FLUENTD_TLS_INSECURE: Final = "RPCSCOPE_FLUENTD_TLS_INSECURE"
ENV_FLUENTD_SPILL_DIR: Final = "RPCSCOPE_FLUENTD_SPILL_DIR"
ENV_FLUENTD_ACCESS_TAG: Final = "RPCSCOPE_FLUENTD_ACCESS_TAG"
ENV_FLUENTD_APP_TAG: Final = "RPCSCOPE_FLUENTD_APP_TAG"
#: Secrets may instead be read from a file (a mounted Kubernetes Secret): ``<VAR>_FILE``.
_FORWARD_SECRET_KEYS: Final = ("fluentd_shared_key", "fluentd_username", "fluentd_password")

_FORWARD_ENV: Final[dict[str, str]] = {
    "fluentd": ENV_FLUENTD,
    "fluentd_shared_key": ENV_FLUENTD_SHARED_KEY,
    "fluentd_username": ENV_FLUENTD_USERNAME,
    "fluentd_password": ENV_FLUENTD_PASSWORD,
    "fluentd_tls_ca": ENV_FLUENTD_TLS_CA,
    "fluentd_tls_cert": ENV_FLUENTD_TLS_CERT,
    "fluentd_tls_key": ENV_FLUENTD_TLS_KEY,
    "fluentd_tls_insecure": ENV_FLUENTD_TLS_INSECURE,
    "fluentd_spill_dir": ENV_FLUENTD_SPILL_DIR,
    "fluentd_access_tag": ENV_FLUENTD_ACCESS_TAG,
    "fluentd_app_tag": ENV_FLUENTD_APP_TAG,
}


def _load_forward_env(env: Mapping[str, str], merged: dict[str, Any],
                      sources: dict[str, str]) -> None:
    """``RPCSCOPE_FLUENTD*`` variables (and ``*_FILE`` for secrets) over the YAML file."""
    for key, var in _FORWARD_ENV.items():
        file_var = f"{var}_FILE"
        raw = env.get(var, "")
        from_file = key in _FORWARD_SECRET_KEYS and env.get(file_var, "") != ""
        if raw != "" and from_file:
            raise ConfigError(f"{var} and {file_var} are both set; fix: keep one of them")
        if from_file:
            path = env[file_var]
            try:
                with open(path, encoding="utf-8") as f:
                    value = f.read().strip("\r\n")
            except OSError as e:
                raise ConfigError(f"{file_var}={path!r} cannot be read: {e.strerror}; fix: "
                                  f"point it at the mounted secret file") from None
            if not value:
                raise ConfigError(f"{file_var}={path!r} is an empty file; fix: put the "
                                  f"secret in it or unset {file_var}")
            merged[key] = value
            sources[key] = f"environment variable {file_var}"
        elif raw != "":
            value = raw.strip()
            if key == "fluentd_tls_insecure":
                if value.lower() not in _BOOL_TRUE | _BOOL_FALSE:
                    raise ConfigError(f"{var}={raw!r} is not a boolean; fix: set {var} to "
                                      f"true or false")
                merged[key] = value.lower() in _BOOL_TRUE
            else:
                merged[key] = raw if key in _FORWARD_SECRET_KEYS else value
            sources[key] = f"environment variable {var}"


def _validate_forward(cfg: Config, fail: Callable[[str, str, str], ConfigError]) -> Config:
    """The shipper's options: checked here, at construction, by the sink's own parsers."""
    from rpcscope.exporters import _forward

    if not isinstance(cfg.fluentd_tls_insecure, bool):
        raise fail("fluentd_tls_insecure", f"must be true or false, got "
                   f"{cfg.fluentd_tls_insecure!r}", "fluentd_tls_insecure: false")
    strings = [k for k in _FORWARD_ENV if k not in ("fluentd", "fluentd_tls_insecure")]
    for key in strings:
        value = getattr(cfg, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise fail(key, f"must be a non-empty string, got {value!r}",
                       f"set {key} to a string, or leave it unset")
    if cfg.fluentd is None:
        set_keys = [k for k in strings if k in cfg.sources]
        if cfg.fluentd_tls_insecure:
            set_keys.append("fluentd_tls_insecure")
        if set_keys:
            raise fail(set_keys[0], "is set but 'fluentd' (the server address) is not",
                       f"set fluentd (e.g. {ENV_FLUENTD}=fluentd:24224) or unset {set_keys[0]}")
        return cfg
    try:
        if not isinstance(cfg.fluentd, str):
            raise ConfigError(f"must be a string, got {type(cfg.fluentd).__name__}")
        servers = _forward.parse_servers(cfg.fluentd, "fluentd")
        _forward.check_tag(cfg.fluentd_access_tag, "fluentd_access_tag")
        _forward.check_tag(cfg.fluentd_app_tag, "fluentd_app_tag")
        if cfg.fluentd_username is not None and cfg.fluentd_shared_key is None:
            raise fail("fluentd_username", "user authentication runs inside the shared-key "
                       "handshake", f"set fluentd_shared_key ({ENV_FLUENTD_SHARED_KEY}) too")
        if (cfg.fluentd_username is None) != (cfg.fluentd_password is None):
            missing = "fluentd_password" if cfg.fluentd_password is None else "fluentd_username"
            raise fail(missing, "username and password go together", f"set {missing} too")
        tls = (any(s.tls for s in servers) or cfg.fluentd_tls_insecure
               or cfg.fluentd_tls_ca is not None or cfg.fluentd_tls_cert is not None)
        if cfg.fluentd_tls_key is not None and cfg.fluentd_tls_cert is None:
            raise fail("fluentd_tls_key", "a client key without a client certificate",
                       f"set fluentd_tls_cert ({ENV_FLUENTD_TLS_CERT}) too")
        if tls:
            if any(s.unix_path is not None for s in servers):
                raise fail("fluentd", "TLS over a unix socket is not supported",
                           "use tls://host:port, or drop the TLS options")
            _forward.tls_context(cfg.fluentd_tls_ca, cfg.fluentd_tls_cert,
                                 cfg.fluentd_tls_key, cfg.fluentd_tls_insecure)
        if cfg.fluentd_spill_dir is not None:
            parent = os.path.dirname(os.path.abspath(cfg.fluentd_spill_dir))
            if not os.path.isdir(parent):
                raise fail("fluentd_spill_dir", f"parent directory {parent!r} does not exist",
                           "create it (a persistent volume), or unset fluentd_spill_dir")
    except ConfigError as e:
        text = str(e)
        if text.startswith("invalid option"):
            raise
        # The sink's parsers name their own parameter; say where the value came from too.
        key = text.split("'")[1] if text.startswith("invalid Fluentd option '") else "fluentd"
        key = key if key.startswith("fluentd") else f"fluentd_{key}"
        raise ConfigError(f"{text} (option {key!r} from {cfg.sources.get(key, 'default')})"
                          ) from None
    return replace(cfg, fluentd=cfg.fluentd.strip())
