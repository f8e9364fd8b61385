"""`antiprof config check` on bad files: exit 2, one named line per problem, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

BAD_CONFIGS = [
    pytest.param(
        "[sampler]\nfrequncy_hz = 99\n",
        ["sampler.frequncy_hz: unknown key (did you mean 'frequency_hz'?)"],
        id="misspelt-key",
    ),
    pytest.param(
        '[sampler]\nfrequency_hz = "99"\n',
        ["sampler.frequency_hz: expected an integer, got a string ('99')"],
        id="string-for-int",
    ),
    pytest.param(
        '[sampler]\nkernel_stacks = "false"\n',
        ["sampler.kernel_stacks: expected a boolean, got a string ('false')"],
        id="string-for-bool",
    ),
    pytest.param(
        '[sampler]\nwindow = "10 parsecs"\n',
        [
            "sampler.window: invalid duration '10 parsecs': use a number and a unit (ns, us, ms, s, m, h, d), "
            "e.g. '10s' or '1h30m'"
        ],
        id="bad-duration",
    ),
    pytest.param(
        "[sampler]\nwindow = 10\n",
        ["sampler.window: expected a duration string like '10s', got an integer (10)"],
        id="number-for-duration",
    ),
    pytest.param(
        "[sampler]\nfrequency_hz = 0\n",
        ["sampler.frequency_hz: must be between 1 and 10000, got 0"],
        id="out-of-range",
    ),
    pytest.param(
        '[sampler]\nmode = "sometimes"\n',
        ["sampler.mode: expected one of 'aggregate', 'trace', got a string ('sometimes')"],
        id="bad-enum",
    ),
    pytest.param(
        '[sampler]\npids = [1, "two"]\n',
        ["sampler.pids[1]: expected an integer, got a string ('two')"],
        id="bad-list-item",
    ),
    pytest.param(
        '[consumers.collector]\ntype = "nosuchsink"\nendpoint = "x:4317"\n',
        ["consumers.collector: consumer type 'nosuchsink' is not installed: pip install antiprof-nosuchsink"],
        id="unknown-consumer-type",
    ),
    pytest.param(
        '[consumers.json]\npath = "${ANTIPROF_TEST_UNSET_VARIABLE}/w.jsonl"\n',
        ["consumers.json.path: environment variable 'ANTIPROF_TEST_UNSET_VARIABLE' is not set"],
        id="missing-env-var",
    ),
    pytest.param(
        "[consumers.json]\npath = 3\n",
        ["consumers.json.path: expected a string, got an integer (3)"],
        id="plugin-config-type",
    ),
    pytest.param(
        '[consumers.json]\npath = "x"\ncompress = true\n',
        ["consumers.json.compress: unknown key (known keys: path)"],
        id="plugin-config-unknown-key",
    ),
    pytest.param(
        "[consumers.json]\nqueue_size = 0\n",
        ["consumers.json.queue_size: expected an integer between 1 and 10000, got an integer (0)"],
        id="queue-size",
    ),
    pytest.param(
        "[agnet]\nnode_name = 'x'\n",
        ["agnet: unknown key (did you mean 'agent'?)"],
        id="misspelt-section",
    ),
    pytest.param(
        "[sampler\n",
        ["invalid TOML: Expected ']' at the end of a table declaration (at line 1, column 9)"],
        id="bad-toml",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_bad_config_is_refused_with_one_named_line_each(
    run_cli: Callable[..., object], write_config: Callable[[str], Path], text: str, expected: list[str]
) -> None:
    path = write_config(text)
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2  # type: ignore[attr-defined]
    lines = result.stderr.splitlines()  # type: ignore[attr-defined]
    assert len(lines) == len(expected)
    for line, message in zip(lines, expected, strict=True):
        assert line.startswith(f"antiprof: {path}: {message}")
    assert "Traceback" not in result.stderr  # type: ignore[attr-defined]


def test_several_problems_are_all_reported(run_cli, write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config('[sampler]\nfrequency_hz = "fast"\nwindow = "soon"\nbogus = 1\n')
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    assert [line.split(": ", 3)[2] for line in result.stderr.splitlines()] == [
        "sampler.frequency_hz",
        "sampler.window",
        "sampler.bogus",
    ]


def test_missing_file(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("config", "check", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr == f"antiprof: {tmp_path / 'nope.toml'}: no such file\n"


def test_good_config_and_env_expansion(run_cli, write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_config('[sampler]\nwindow = "2s"\n[consumers.debug]\ntype = "json"\npath = "${OUT_DIR}/w.jsonl"\n')
    checked = run_cli("config", "check", str(path), env={"OUT_DIR": str(tmp_path)})
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"{path}: ok; consumers: debug (json)\n"
    shown = run_cli("config", "show", str(path), env={"OUT_DIR": str(tmp_path)})
    assert f'path = "{tmp_path}/w.jsonl"' in shown.stdout
    assert 'window = "2s"' in shown.stdout
    assert "frequency_hz = 19" in shown.stdout  # defaults are filled in


def test_config_path_from_environment(run_cli, write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config("[sampler]\nfrequency_hz = 77\n")
    shown = run_cli("config", "show", env={"ANTIPROF_CONFIG": str(path)})
    assert "frequency_hz = 77" in shown.stdout


def test_config_show_redacts_secrets(run_cli, write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config('[consumers.otlp]\nendpoint = "c:4317"\nheaders = { authorization = "Bearer ${TOKEN}" }\n')
    shown = run_cli("config", "show", str(path), env={"TOKEN": "s3cr3t"})
    assert shown.returncode == 0, shown.stderr
    assert "s3cr3t" not in shown.stdout
    assert 'authorization = "<redacted>"' in shown.stdout
    assert 'endpoint = "c:4317"' in shown.stdout
