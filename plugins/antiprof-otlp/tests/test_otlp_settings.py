"""Config plus the standard OTEL_EXPORTER_OTLP_* variables: precedence and one-line errors."""

from __future__ import annotations

from typing import Any

import pytest
from antiprof_otlp.config import OtlpConfig
from antiprof_otlp.settings import ExportSettings, SettingsError, resolve_settings

from antiprof_core.config import ConfigError, structure_section


def settings(options: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> ExportSettings:
    config = structure_section(options or {}, OtlpConfig, "consumers.otlp")
    return resolve_settings(config, environ or {})


def test_defaults_are_tls_to_localhost_with_gzip() -> None:
    s = settings()
    assert (s.target, s.insecure, s.gzip, s.timeout, s.headers) == ("localhost:4317", False, True, 10.0, ())


def test_environment_fills_what_the_config_leaves_unset() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,x-tenant=t1",
    }
    s = settings({}, environ)
    assert (s.target, s.insecure) == ("collector:4317", True)
    assert dict(s.headers) == {"authorization": "Bearer abc", "x-tenant": "t1"}


def test_profiles_variables_beat_generic_ones_and_config_beats_both() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "generic:4317",
        "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT": "profiles:4317",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=env,x-other=1",
    }
    s = settings({}, environ)
    assert (s.target, s.insecure) == ("profiles:4317", True)
    s = settings({"endpoint": "mine:4317", "insecure": False, "headers": {"X-Tenant": "cfg"}}, environ)
    assert (s.target, s.insecure) == ("mine:4317", False)
    assert dict(s.headers) == {"x-tenant": "cfg", "x-other": "1"}


def test_https_scheme_means_tls_even_if_insecure_variable_says_true() -> None:
    s = settings({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317/", "OTEL_EXPORTER_OTLP_INSECURE": "true"})
    assert (s.target, s.insecure) == ("collector:4317", False)


def test_header_values_stay_out_of_repr() -> None:
    s = settings({"headers": {"authorization": "Bearer very-secret"}})
    assert "very-secret" not in repr(s) and s.header_names == ("authorization",)


@pytest.mark.parametrize(
    ("options", "environ", "message"),
    [
        (
            {"endpoint": "collector"},
            {},
            "consumers.otlp.endpoint: expected host:port (e.g. 'otel-collector:4317'), got 'collector'",
        ),
        ({"endpoint": "grpc://c:4317"}, {}, "consumers.otlp.endpoint: unsupported scheme 'grpc' in 'grpc://c:4317'"),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:99999"}, "OTEL_EXPORTER_OTLP_ENDPOINT: expected host:port"),
        (
            {},
            {"OTEL_EXPORTER_OTLP_INSECURE": "yes"},
            "OTEL_EXPORTER_OTLP_INSECURE: expected 'true' or 'false', got 'yes'",
        ),
        ({}, {"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS: expected key=value pairs"),
        ({"headers": {"bad key": "v"}}, {}, "consumers.otlp.headers: invalid header name 'bad key'"),
        ({"headers": {"a": "line\nbreak"}}, {}, "consumers.otlp.headers: header 'a' has a value with characters"),
        ({"cert_file": "/x.pem"}, {}, "consumers.otlp: cert_file and key_file go together"),
        (
            {"ca_file": "/nonexistent/ca.pem"},
            {},
            "consumers.otlp.ca_file: cannot read /nonexistent/ca.pem: No such file",
        ),
        ({"insecure": True, "ca_file": "/x.pem"}, {}, "consumers.otlp: ca_file/cert_file/key_file are for TLS"),
    ],
)
def test_bad_settings_say_which_key_or_variable(options: dict[str, Any], environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(options, environ)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_config_keys_are_strict() -> None:
    with pytest.raises(ConfigError) as caught:
        structure_section({"insecure": "true", "timout": "1s", "queue_bytes": "lots"}, OtlpConfig, "consumers.otlp")
    assert sorted(caught.value.problems) == [
        "consumers.otlp.insecure: expected a boolean, got a string ('true')",
        "consumers.otlp.queue_bytes: invalid size 'lots': use a number and a unit"
        " (B, KiB, MiB, GiB, kB, MB, GB), e.g. '100MiB'",
        "consumers.otlp.timout: unknown key (did you mean 'timeout'?)",
    ]


def test_the_installed_entry_point_offers_the_otlp_type() -> None:
    from antiprof_core.plugins import load_plugins

    loaded = load_plugins(environ={})
    assert loaded.types["otlp"].config_class is OtlpConfig
    (info,) = [plugin for plugin in loaded.plugins if plugin.name == "otlp"]
    assert (info.distribution, info.error) == ("antiprof-otlp", None)
