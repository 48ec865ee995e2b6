"""Turning the Fluentd shipper on without code: ``RPCSCOPE_FLUENTD*`` variables, ``*_FILE``
secrets, YAML and keyword arguments, with the usual precedence and errors that name the key
and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rpcscope import Config, ConfigError
from rpcscope.exporters._forward import ForwardSink, forward_options
from rpcscope.testing import ForwardReceiver


def load(environ: dict[str, str] | None = None, **kwargs: Any) -> Config:
    return Config.load(environ=environ or {}, **kwargs)


def error(environ: dict[str, str] | None = None, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(environ, **kwargs)
    return str(info.value)


def test_off_by_default() -> None:
    cfg = load()
    assert cfg.fluentd is None
    assert cfg.fluentd_access_tag == "rpcscope.access"
    assert cfg.fluentd_app_tag == "rpcscope.app"


def test_environment_turns_it_on_and_builds_a_sink(tmp_path: Path) -> None:
    with ForwardReceiver(shared_key="k", users={"u": "p"}) as receiver:
        cfg = load({"RPCSCOPE_FLUENTD": receiver.address,
                    "RPCSCOPE_FLUENTD_SHARED_KEY": "k",
                    "RPCSCOPE_FLUENTD_USERNAME": "u",
                    "RPCSCOPE_FLUENTD_PASSWORD": "p",
                    "RPCSCOPE_FLUENTD_SPILL_DIR": str(tmp_path / "spill"),
                    "RPCSCOPE_FLUENTD_APP_TAG": "shop.app"})
        sink = ForwardSink(**forward_options(cfg))
        try:
            sink.write([{"@timestamp": "2026-01-01T00:00:00.000001Z", "message": "hi",
                         "log.logger": "shop"}])
            assert sink.flush(10)
            [event] = receiver.wait_for(1)
            assert event.tag == "shop.app"
        finally:
            sink.close(1)


def test_precedence_keyword_over_environment_over_file(tmp_path: Path) -> None:
    path = tmp_path / "rpcscope.yaml"
    path.write_text("fluentd: file-host:1\nfluentd_access_tag: from.file\n"
                    "fluentd_app_tag: from.file\n")
    env = {"RPCSCOPE_CONFIG": str(path), "RPCSCOPE_FLUENTD": "env-host:2",
           "RPCSCOPE_FLUENTD_APP_TAG": "from.env"}
    cfg = Config.load(environ=env, fluentd="kw-host:3")
    assert cfg.fluentd == "kw-host:3"
    assert cfg.fluentd_app_tag == "from.env"
    assert cfg.fluentd_access_tag == "from.file"


def test_secrets_from_files(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    password = tmp_path / "password"
    password.write_text("pw")
    cfg = load({"RPCSCOPE_FLUENTD": "f:24224", "RPCSCOPE_FLUENTD_SHARED_KEY_FILE": str(key),
                "RPCSCOPE_FLUENTD_USERNAME": "u",
                "RPCSCOPE_FLUENTD_PASSWORD_FILE": str(password)})
    assert cfg.fluentd_shared_key == "s3cret"
    assert cfg.fluentd_password == "pw"
    assert "FILE" in cfg.sources["fluentd_shared_key"]


def test_secrets_stay_out_of_repr() -> None:
    cfg = load({"RPCSCOPE_FLUENTD": "f:24224", "RPCSCOPE_FLUENTD_SHARED_KEY": "s3cret-key",
                "RPCSCOPE_FLUENTD_USERNAME": "u", "RPCSCOPE_FLUENTD_PASSWORD": "pa55word"})
    assert "s3cret-key" not in repr(cfg)
    assert "pa55word" not in repr(cfg)


def test_secret_file_errors(tmp_path: Path) -> None:
    base = {"RPCSCOPE_FLUENTD": "f:24224"}
    msg = error({**base, "RPCSCOPE_FLUENTD_SHARED_KEY_FILE": str(tmp_path / "missing")})
    assert "RPCSCOPE_FLUENTD_SHARED_KEY_FILE" in msg and "fix:" in msg
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "empty" in error({**base, "RPCSCOPE_FLUENTD_SHARED_KEY_FILE": str(empty)})
    both = error({**base, "RPCSCOPE_FLUENTD_SHARED_KEY": "a",
                  "RPCSCOPE_FLUENTD_SHARED_KEY_FILE": str(empty)})
    assert "both set" in both


@pytest.mark.parametrize(("env", "key", "problem"), [
    ({"RPCSCOPE_FLUENTD": "host:99999"}, "fluentd", "not 1-65535"),
    ({"RPCSCOPE_FLUENTD": "::1:24224"}, "fluentd", "brackets"),
    ({"RPCSCOPE_FLUENTD": "f", "RPCSCOPE_FLUENTD_ACCESS_TAG": "bad tag"},
     "fluentd_access_tag", "not a Fluentd tag"),
    ({"RPCSCOPE_FLUENTD_SHARED_KEY": "k"}, "fluentd_shared_key", "'fluentd'"),
    ({"RPCSCOPE_FLUENTD": "f", "RPCSCOPE_FLUENTD_USERNAME": "u",
      "RPCSCOPE_FLUENTD_PASSWORD": "p"}, "fluentd_username", "shared-key handshake"),
    ({"RPCSCOPE_FLUENTD": "f", "RPCSCOPE_FLUENTD_SHARED_KEY": "k",
      "RPCSCOPE_FLUENTD_USERNAME": "u"}, "fluentd_password", "go together"),
    ({"RPCSCOPE_FLUENTD": "f", "RPCSCOPE_FLUENTD_TLS_CA": "/no/such/ca.pem"},
     "fluentd_tls_ca", "does not exist"),
    ({"RPCSCOPE_FLUENTD": "f", "RPCSCOPE_FLUENTD_TLS_KEY": "/k.pem"},
     "fluentd_tls_key", "without a client certificate"),
    ({"RPCSCOPE_FLUENTD": "unix:///run/f.sock", "RPCSCOPE_FLUENTD_TLS_INSECURE": "true"},
     "fluentd", "unix socket"),
    ({"RPCSCOPE_FLUENTD": "f", "RPCSCOPE_FLUENTD_TLS_INSECURE": "maybe"},
     "RPCSCOPE_FLUENTD_TLS_INSECURE", "not a boolean"),
    ({"RPCSCOPE_FLUENTD": "f", "RPCSCOPE_FLUENTD_SPILL_DIR": "/no/such/dir/spill"},
     "fluentd_spill_dir", "does not exist"),
])
def test_invalid_values_name_the_key_the_source_and_the_fix(env: dict[str, str], key: str,
                                                           problem: str) -> None:
    msg = error(env)
    assert key in msg
    assert problem in msg
    assert "fix:" in msg


def test_yaml_types_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("fluentd: f:1\nfluentd_tls_insecure: 'yes'\n")
    with pytest.raises(ConfigError, match=r"fluentd_tls_insecure.*true or false"):
        Config.load(config_file=path, environ={})
    msg = error(fluentd=["a:1"])
    assert "'fluentd'" in msg and "keyword argument" in msg


def test_tls_scheme_or_ca_turns_tls_on(tmp_path: Path) -> None:
    cfg = load({"RPCSCOPE_FLUENTD": "tls://f:24224", "RPCSCOPE_FLUENTD_TLS_INSECURE": "1"})
    assert cfg.fluentd_tls_insecure is True
    sink = ForwardSink(**forward_options(cfg))
    try:
        assert all(s.tls for s in sink.servers)
    finally:
        sink.close(0.1)
