import pytest

from antiprof_core.units import ByteSize, Duration, format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10.0), ("1h", 3600.0), ("1h30m", 5400.0), ("250us", 0.00025), ("2d", 172800.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "10x", "s", "", "1.5.s", "-3s"])
def test_bad_durations_say_how(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*use a number and a unit"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"), [("64KiB", 65536), ("100MiB", 104857600), ("1GiB", 1 << 30), ("10MB", 10_000_000), ("512", 512)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


def test_bad_size() -> None:
    with pytest.raises(ValueError, match=r"invalid size '12 parsecs'"):
        parse_size("12 parsecs")


@pytest.mark.parametrize("seconds", [5e-7, 1e-9, 1.5e-9, 0.0015, 1.5, 90.0, 3599.5, 1e-4 / 3, 86400.0 * 366])
def test_format_duration_round_trips_without_an_exponent(seconds: float) -> None:
    text = format_duration(seconds)
    assert "e" not in text.rstrip("s")
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-9, abs=1e-12)


def test_sub_microsecond_durations_print_in_nanoseconds() -> None:
    assert format_duration(5e-7) == "500ns"
    assert str(Duration(5e-7)) == "500ns"


def test_sizes_and_durations_print_without_recursing() -> None:
    assert str(ByteSize(1000)) == "1000B" and str(ByteSize(3 << 20)) == "3MiB"
    assert str(Duration(1.5)) == "1500ms"


@pytest.mark.parametrize(
    ("text", "problem"),
    [("1" + "0" * 400 + "s", "longer than the maximum, 366d"), ("367d", "longer than the maximum, 366d")],
)
def test_absurd_durations_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_duration(text)


def test_absurd_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="larger than the maximum"):
        parse_size("1" + "0" * 400 + "MiB")
