"""Configuration: every invalid value fails at construction naming the key and the fix;
precedence is keyword arguments > RPCSCOPE_* environment > YAML file > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rpcscope
from rpcscope import Config, ConfigError, schema


def _err(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        Config.load(environ={}, **kwargs)
    return str(info.value)


def test_defaults() -> None:
    cfg = Config.load(environ={})
    assert cfg.histogram_buckets == schema.DEFAULT_BUCKETS
    assert set(schema.DEFAULT_EXCLUDED_SERVICES) <= set(cfg.exclude_services)
    assert cfg.access_log == "stdout"
    assert cfg.disabled is False


def test_unknown_key_suggests_the_right_one() -> None:
    msg = _err(histogram_bucket=[0.1])
    assert "'histogram_bucket'" in msg
    assert "did you mean 'histogram_buckets'" in msg


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rpcscope.yaml"
    path.write_text("servce: checkout\n")
    with pytest.raises(ConfigError) as info:
        Config.load(config_file=path, environ={})
    assert str(path) in str(info.value)
    assert "did you mean 'service'" in str(info.value)


@pytest.mark.parametrize(("buckets", "problem"), [
    ([0.5, 0.1], "strictly increasing"),
    ([0.1, 0.1], "strictly increasing"),
    ([0, 0.1], "positive"),
    ([-1.0], "positive"),
    ([float("inf")], "finite"),
    ([], "positive"),
    (["fast"], "list of numbers"),
])
def test_bad_buckets(buckets: list[Any], problem: str) -> None:
    msg = _err(histogram_buckets=buckets)
    assert "'histogram_buckets'" in msg
    assert problem in msg
    assert "fix:" in msg


def test_unsorted_buckets_fix_shows_the_sorted_list() -> None:
    assert "sort them: [0.1, 0.5]" in _err(histogram_buckets=[0.5, 0.1])


@pytest.mark.parametrize(("var", "value", "key"), [
    ("RPCSCOPE_DISABLED", "maybe", "RPCSCOPE_DISABLED"),
    ("RPCSCOPE_TRACE", "yess", "RPCSCOPE_TRACE"),
    ("RPCSCOPE_MAX_METHODS", "lots", "RPCSCOPE_MAX_METHODS"),
    ("RPCSCOPE_HISTOGRAM_BUCKETS", "0.1,fast", "RPCSCOPE_HISTOGRAM_BUCKETS"),
])
def test_bad_env_values_name_the_variable(var: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.load(environ={var: value})
    msg = str(info.value)
    assert key in msg
    assert repr(value) in msg
    assert "fix:" in msg


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_env_bool_true_spellings(value: str) -> None:
    assert Config.load(environ={"RPCSCOPE_DISABLED": value}).disabled is True


def test_env_values_are_parsed() -> None:
    cfg = Config.load(environ={
        "RPCSCOPE_HISTOGRAM_BUCKETS": "0.01, 0.1,1",
        "RPCSCOPE_EXCLUDE_SERVICES": "a.A, b.B",
        "RPCSCOPE_MAX_METHODS": "50",
        "RPCSCOPE_LOG_METADATA": "X-Request-Id",
        "RPCSCOPE_SERVICE": "from-env",
    })
    assert cfg.histogram_buckets == (0.01, 0.1, 1.0)
    assert cfg.exclude_services == ("a.A", "b.B")
    assert cfg.max_methods == 50
    assert cfg.log_metadata == ("x-request-id",)
    assert cfg.service == "from-env"


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"max_methods": 0}, "max_methods"),
    ({"max_methods": True}, "max_methods"),
    ({"log_queue_size": -1}, "log_queue_size"),
    ({"service": "  "}, "service"),
    ({"trace": "yes"}, "trace"),
    ({"exclude_services": "grpc.health.v1.Health"}, "exclude_services"),
    ({"method_filter": "not callable"}, "method_filter"),
    ({"access_log": 42}, "access_log"),
    ({"access_log": "/no/such/dir/access.log"}, "access_log"),
    ({"registry": object()}, "registry"),
])
def test_bad_values_name_key_source_and_fix(kwargs: dict[str, Any], key: str) -> None:
    msg = _err(**kwargs)
    assert f"'{key}'" in msg
    assert "keyword argument" in msg
    assert "fix:" in msg


def test_yaml_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="cannot be read"):
        Config.load(config_file=missing, environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("service: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(config_file=broken, environ={})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        Config.load(config_file=scalar, environ={})
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("histogram_buckets: [1, 0.5]\n")
    with pytest.raises(ConfigError) as info:
        Config.load(config_file=bad_value, environ={})
    assert f"config file {bad_value}" in str(info.value)


def test_yaml_file_via_env_and_rpcscope_section(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("rpcscope:\n  service: from-file\n  max_methods: 7\n")
    cfg = Config.load(environ={"RPCSCOPE_CONFIG": str(path)})
    assert (cfg.service, cfg.max_methods) == ("from-file", 7)


def test_precedence_kwargs_over_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "rpcscope.yaml"
    path.write_text("service: from-file\nenvironment: file-env\nmax_methods: 11\n"
                    "histogram_buckets: [0.1, 1]\n")
    env = {"RPCSCOPE_SERVICE": "from-env", "RPCSCOPE_MAX_METHODS": "22"}
    cfg = Config.load(config_file=path, environ=env, service="from-kwargs")
    assert cfg.service == "from-kwargs"  # kwargs > env > file
    assert cfg.max_methods == 22  # env > file
    assert cfg.environment == "file-env"  # file > default
    assert cfg.histogram_buckets == (0.1, 1.0)


def test_otel_service_name_fallback() -> None:
    assert Config.load(environ={"OTEL_SERVICE_NAME": "otel-name"}).service == "otel-name"
    env = {"OTEL_SERVICE_NAME": "otel-name", "RPCSCOPE_SERVICE": "ours"}
    assert Config.load(environ=env).service == "ours"


def test_scope_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scope() itself raises (not the first RPC), for kwargs and for the environment."""
    with pytest.raises(ConfigError, match="did you mean 'service'"):
        rpcscope.Scope(servic="x")
    monkeypatch.setenv("RPCSCOPE_METRICS", "nope")
    with pytest.raises(ConfigError, match="RPCSCOPE_METRICS"):
        rpcscope.Scope(service="x")


def test_custom_buckets_reach_the_histogram(tmp_path: Path) -> None:
    import grpc

    from rpcscope.testing import sample_value

    with rpcscope.Scope(service="s", access_log="off", histogram_buckets=[0.5, 30]) as scope:
        from concurrent.futures import ThreadPoolExecutor

        import _svc

        server = grpc.server(ThreadPoolExecutor(2), interceptors=scope.server_interceptors())
        server.add_generic_rpc_handlers((_svc.sync_handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                ch.unary_unary("/test.v1.Echo/Unary")(b"ok")
        finally:
            server.stop(None)
        lab = {"grpc_type": "unary", "grpc_service": "test.v1.Echo", "grpc_method": "Unary"}
        les = {s.labels["le"] for fam in scope.registry.collect() for s in fam.samples
               if s.name == "grpc_server_handling_seconds_bucket"}
        assert les == {"0.5", "30", "+Inf"}  # as Go writes them
        assert sample_value(scope.registry, "grpc_server_handling_seconds_bucket",
                            {**lab, "le": "30"}) == 1
