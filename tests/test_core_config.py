"""`antiprof config check` on bad files: exit 2, one named line per problem, no traceback."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # conftest is pytest's, only mypy imports it
    from conftest import RunCli

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
    run_cli: RunCli, write_config: Callable[[str], Path], text: str, expected: list[str]
) -> None:
    path = write_config(text)
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == len(expected)
    for line, message in zip(lines, expected, strict=True):
        assert line.startswith(f"antiprof: {path}: {message}")
    assert "Traceback" not in result.stderr


def test_several_problems_are_all_reported(run_cli: RunCli, write_config: Callable[[str], Path]) -> None:
    path = write_config('[sampler]\nfrequency_hz = "fast"\nwindow = "soon"\nbogus = 1\n')
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    assert [line.split(": ", 3)[2] for line in result.stderr.splitlines()] == [
        "sampler.frequency_hz",
        "sampler.window",
        "sampler.bogus",
    ]


def test_missing_file(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("config", "check", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr == f"antiprof: {tmp_path / 'nope.toml'}: no such file\n"


def test_good_config_and_env_expansion(run_cli: RunCli, write_config: Callable[[str], Path], tmp_path: Path) -> None:
    path = write_config('[sampler]\nwindow = "2s"\n[consumers.debug]\ntype = "json"\npath = "${OUT_DIR}/w.jsonl"\n')
    checked = run_cli("config", "check", str(path), env={"OUT_DIR": str(tmp_path)})
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"{path}: ok; consumers: debug (json)\n"
    shown = run_cli("config", "show", str(path), env={"OUT_DIR": str(tmp_path)})
    assert f'path = "{tmp_path}/w.jsonl"' in shown.stdout
    assert 'window = "2s"' in shown.stdout
    assert "frequency_hz = 19" in shown.stdout  # defaults are filled in


def test_config_path_from_environment(run_cli: RunCli, write_config: Callable[[str], Path]) -> None:
    path = write_config("[sampler]\nfrequency_hz = 77\n")
    shown = run_cli("config", "show", env={"ANTIPROF_CONFIG": str(path)})
    assert "frequency_hz = 77" in shown.stdout


def test_config_show_redacts_secrets(run_cli: RunCli, write_config: Callable[[str], Path]) -> None:
    path = write_config('[consumers.otlp]\nendpoint = "c:4317"\nheaders = { authorization = "Bearer ${TOKEN}" }\n')
    shown = run_cli("config", "show", str(path), env={"TOKEN": "s3cr3t"})
    assert shown.returncode == 0, shown.stderr
    assert "s3cr3t" not in shown.stdout
    assert 'authorization = "<redacted>"' in shown.stdout
    assert 'endpoint = "c:4317"' in shown.stdout


# --- hostile and broken config files: one line and exit 2 from both `config check` and `run` ------

MiB = 1 << 20


def _max_stacks_line() -> str:
    """10 million stacks round up to 2^24 entries; two map sets of 127-deep stacks and counts."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    memory = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))
    needed = 2 * (1 << 24) * (8 * 127 + 96)
    return (
        f"sampler.max_stacks: 10000000 stacks of depth 127 need {needed / (1 << 30):.1f} GiB of kernel memory "
        f"for BPF maps, more than half of this host's {memory / (1 << 30):.1f} GiB"
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "antiprof.toml"
    path.write_text(text)
    return path


def _symlink_loop(tmp_path: Path) -> Path:
    (tmp_path / "loop.toml").symlink_to("loop.toml")
    return tmp_path / "loop.toml"


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "antiprof.toml"


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "fifo.toml")
    return tmp_path / "fifo.toml"


def _too_big(tmp_path: Path) -> Path:
    return _write(tmp_path, "# padding\n" * (MiB // 10 + 1))


HOSTILE_CONFIGS = [
    pytest.param(
        lambda t: _write(t, "a = " + "[" * 5000 + "]" * 5000 + "\n"),
        "{path}: invalid config: tables or arrays nested more than 32 deep",
        id="5000-deep-arrays",
    ),
    pytest.param(
        lambda t: _write(t, "a = " + "{ b = " * 5000 + "1" + " }" * 5000 + "\n"),
        "{path}: invalid config: tables or arrays nested more than 32 deep",
        id="5000-deep-inline-tables",
    ),
    pytest.param(
        lambda t: _write(t, "[" + ".".join(["a"] * 5000) + "]\n"),
        "{path}: " + ".".join(["a"] * 33) + ": tables or arrays nested more than 32 deep",
        id="5000-deep-tables",
    ),
    pytest.param(_symlink_loop, "{path}: cannot open: Too many levels of symbolic links", id="symlink-loop"),
    pytest.param(_under_a_file, "{path}: cannot open: Not a directory", id="under-a-regular-file"),
    pytest.param(lambda t: t / ("a" * 5000), "{path}: cannot open: File name too long", id="5000-character-path"),
    pytest.param(_fifo, "{path}: is a FIFO, not a regular file", id="fifo"),
    pytest.param(lambda t: Path("/dev/zero"), "{path}: is a character device, not a regular file", id="dev-zero"),
    pytest.param(_too_big, "{path}: larger than 1MiB: not a config file", id="larger-than-1MiB"),
    pytest.param(
        lambda t: _write(t, '[sampler]\nwindow = "1' + "0" * 400 + 's"\n'),
        "{path}: sampler.window: invalid duration '1" + "0" * 39 + "'... (402 characters): "
        "longer than the maximum, 366d",
        id="huge-duration",
    ),
    pytest.param(
        lambda t: _write(t, '[agent]\nmetrics_address = "127.0.0.1:99999"\n'),
        "{path}: agent.metrics_address: expected host:port with a port from 1 to 65535, got '127.0.0.1:99999'",
        id="metrics-port-out-of-range",
    ),
    pytest.param(
        lambda t: _write(t, "[sampler]\npids = [-1]\n"),
        "{path}: sampler.pids[0]: must be a process ID between 1 and 4194304, got -1",
        id="pid-negative",
    ),
    pytest.param(
        lambda t: _write(t, "[sampler]\npids = [1, 0]\n"),
        "{path}: sampler.pids[1]: must be a process ID between 1 and 4194304, got 0",
        id="pid-zero",
    ),
    pytest.param(
        lambda t: _write(t, f"[sampler]\npids = [{2**32 + os.getpid()}]\n"),
        f"{{path}}: sampler.pids[0]: must be a process ID between 1 and 4194304, got {2**32 + os.getpid()}",
        id="pid-wrapping-to-a-real-one",
    ),
    pytest.param(
        lambda t: _write(t, '[consumers.otlp]\nendpoint = "collector"\n'),
        "{path}: consumers.otlp.endpoint: expected host:port (e.g. 'otel-collector:4317'), got 'collector'",
        id="otlp-endpoint-without-port",
    ),
    pytest.param(
        lambda t: _write(t, '[consumers.otlp]\nendpoint = "c:4317"\nheaders = { "x team" = "a" }\n'),
        "{path}: consumers.otlp.headers: invalid header name 'x team'",
        id="otlp-bad-header-name",
    ),
    pytest.param(
        lambda t: _write(t, "[sampler]\nmax_stacks = 10000000\n"),
        None,  # the figure depends on this host's memory
        id="max-stacks-beyond-memory",
    ),
    pytest.param(
        lambda t: _write(t, '[consumers.collector]\ntype = "otlpp"\n'),
        "{path}: consumers.collector: consumer type 'otlpp' is not installed (did you mean 'otlp'?)",
        id="misspelt-consumer-type",
    ),
    pytest.param(
        lambda t: _write(t, '[sampler]\nsource = "synthetik"\n'),
        "{path}: sampler.source: unknown source 'synthetik' (did you mean 'synthetic'?)",
        id="misspelt-source",
    ),
    pytest.param(
        lambda t: _write(t, '[sampler]\nsource = "replay"\n'),
        "{path}: sampler.replay.path: required when sampler.source = 'replay'",
        id="replay-without-path",
    ),
]


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(("make", "expected"), HOSTILE_CONFIGS)
def test_hostile_config_is_one_line_and_exit_2(
    run_cli: Any, tmp_path: Path, make: Callable[[Path], Path], expected: str | None, command: str
) -> None:
    path = make(tmp_path)
    line = (expected or "{path}: " + _max_stacks_line()).format(path=path)
    args = ("config", "check", str(path)) if command == "check" else ("run", "-c", str(path), "--duration", "1s")
    result = run_cli(*args, timeout=30)  # a FIFO must not hang it
    assert (result.returncode, result.stderr) == (2, f"antiprof: {line}\n")
    assert result.stdout == ""


def test_config_show_redacts_a_password_in_an_endpoint_url(run_cli: Any, write_config: Any) -> None:
    path = write_config('[consumers.otlp]\nendpoint = "https://alice:hunter2@collector:4317"\n')
    shown = run_cli("config", "show", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "hunter2" not in shown.stdout
    assert 'endpoint = "https://alice:<redacted>@collector:4317"' in shown.stdout


def test_config_show_prints_sizes_that_are_not_whole_kibibytes(run_cli: Any, write_config: Any) -> None:
    path = write_config('[consumers.perfdata]\nmax_file_size = 1000\n[agent]\nshutdown_timeout = "1500ms"\n')
    shown = run_cli("config", "show", str(path))
    assert shown.returncode == 0, shown.stderr
    assert 'max_file_size = "1000B"' in shown.stdout and 'shutdown_timeout = "1500ms"' in shown.stdout
    again = write_config(shown.stdout, name="shown.toml")  # what show prints, check accepts
    assert run_cli("config", "check", str(again)).returncode == 0


def test_record_refuses_a_pid_that_would_wrap_to_another_process(run_cli: Any, tmp_path: Path) -> None:
    wrapped = 2**32 + os.getpid()
    result = run_cli("record", "-p", str(wrapped), "--source", "synthetic", "-d", "1s", "-o", str(tmp_path))
    assert (result.returncode, result.stderr) == (
        2,
        f"antiprof: sampler.pids[0]: must be a process ID between 1 and 4194304, got {wrapped}\n",
    )
