import pytest

from antiprof_core.units import format_duration, format_size, parse_duration, parse_size


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
