"""Our unwind rows against binutils' own interpretation (`readelf --debug-dump=frames-interp`)
for every FDE of Debian's libc and python3.11, which are built without frame pointers."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from antiprof_core.sources.unwind import CfaKind, RbpKind, Row, build_table

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
PYTHON = "/usr/bin/python3.11"

_ENTRY = re.compile(r"^([0-9a-f]+) [0-9a-f]+ ([0-9a-f]+) (CIE|FDE)(?: cie=([0-9a-f]+) pc=([0-9a-f]+)\.\.([0-9a-f]+))?")
_SECTION = re.compile(r"^Contents of the (\S+) section")

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is not installed")


def readelf_fdes(path: str, wanted: str = ".eh_frame") -> list[tuple[int, int, list[tuple[int, dict[str, str]]]]]:
    """(begin, end, rows) per FDE of one section; rows are (loc, {column: rule}); CIE rows fill in empty FDEs."""
    # readelf exits 1 on libc without saying why (it prints the whole table); the output is checked instead
    command = ["readelf", "--wide", "--debug-dump=frames-interp", path]
    text = subprocess.run(command, capture_output=True, text=True).stdout
    assert f"Contents of the {wanted} section" in text, f"readelf printed no {wanted} for {path}"
    cies: dict[str, list[tuple[int, dict[str, str]]]] = {}
    fdes: list[tuple[int, int, list[tuple[int, dict[str, str]]]]] = []
    section = ""
    current: list[tuple[int, dict[str, str]]] = []
    columns: list[str] = []
    for line in text.splitlines():
        if match := _SECTION.match(line):
            section = match.group(1)
            continue
        if section != wanted:
            continue
        if match := _ENTRY.match(line):
            current = []
            columns = []
            if match.group(3) == "CIE":
                cies[match.group(1)] = current
            else:
                fdes.append((int(match.group(5), 16), int(match.group(6), 16), current))
                current.append((-1, {"cie": match.group(4)}))
            continue
        fields = re.sub(r"(\w+) \((\w+)\)", r"\1(\2)", line).split()  # "r9 (r9)": a register rule
        if fields[:2] == ["LOC", "CFA"]:
            columns = fields[1:]
        elif not fields:
            columns = []  # a table ends at a blank line ("000000a0 ZERO terminator" is no row)
        elif columns and len(fields) == len(columns) + 1 and re.fullmatch(r"[0-9a-f]{16}", fields[0]):
            current.append((int(fields[0], 16), dict(zip(columns, fields[1:], strict=True))))
    resolved = []
    for begin, end, rows in fdes:
        cie = rows[0][1]["cie"]
        body = rows[1:]
        if not body:  # no instructions: readelf prints nothing, the CIE's row holds
            body = [(begin, rule) for _, rule in cies[cie]]
        resolved.append((begin, end, body))
    return resolved


def expected_matches(rule: dict[str, str], row: Row) -> str | None:
    """None when our row says what readelf says, else why not."""
    ra = rule.get("ra", "u")
    if ra == "u":
        return None if row.cfa_kind == CfaKind.OUTERMOST else f"ra undefined, we have {row}"
    if ra != "c-8" and not re.fullmatch(r"c-?\d+", ra):
        return None if row.cfa_kind == CfaKind.RA_RULE else f"ra {ra}, we have {row}"
    cfa = rule["CFA"]
    if match := re.fullmatch(r"(rsp|rbp)\+(-?\d+)", cfa):
        want = CfaKind.RSP if match.group(1) == "rsp" else CfaKind.RBP
        if (row.cfa_kind, row.cfa_offset) != (want, int(match.group(2))):
            return f"CFA {cfa}, we have {row}"
    elif cfa == "exp":
        if row.cfa_kind not in (CfaKind.PLT, CfaKind.DEREF_RBP, CfaKind.CFA_EXPRESSION):
            return f"CFA exp, we have {row}"
        return None
    else:
        return None if row.cfa_kind == CfaKind.CFA_REGISTER else f"CFA {cfa}, we have {row}"
    if row.ra_offset != int(ra[1:]):
        return f"ra {ra}, we have {row}"
    rbp = rule.get("rbp", "u")
    if rbp in ("u", "s"):
        want_rbp: tuple[RbpKind, int | None] = (RbpKind.UNCHANGED, 0)
    elif re.fullmatch(r"c-?\d+", rbp):
        want_rbp = (RbpKind.AT_CFA, int(rbp[1:]))
    elif rbp == "exp" and row.rbp_kind == RbpKind.AT_RBP:  # saved at rbp+N: readelf -wf has the N
        return None
    else:
        want_rbp = (RbpKind.UNKNOWN, 0)
    if (row.rbp_kind, row.rbp_offset) != want_rbp:
        return f"rbp {rbp}, we have {row}"
    return None


def check_against_readelf(path: str, section: str, least: int) -> None:
    fdes = readelf_fdes(path, section)
    table = build_table(path)
    assert table.counts["fdes"] >= len(fdes) and table.counts["bad_fdes"] == 0
    compared = 0
    problems = []
    for begin, end, rows in fdes:
        for loc, rule in rows:
            if loc >= end:  # readelf prints a row an advance to the FDE's very end opens: it covers nothing
                continue
            row = table.lookup(loc)
            assert row is not None, f"{path}: no row for {loc:#x}, readelf has {rule}"
            problem = expected_matches(rule, row)
            if problem:
                problems.append(f"FDE {begin:#x}..{end:#x} at {loc:#x}: {problem}")
            compared += 1
        last = table.lookup(end - 1)
        assert last is not None and expected_matches(rows[-1][1], last) is None, f"{begin:#x}: last row"
    assert not problems, "\n".join(problems[:20])
    assert compared > least


@pytest.mark.parametrize("path", [LIBC, PYTHON])
def test_every_row_matches_readelf(path: str) -> None:
    if not Path(path).exists():
        pytest.skip(f"{path} is not installed")
    check_against_readelf(path, ".eh_frame", 20_000)
    assert build_table(path).counts["fdes"] == len(readelf_fdes(path))


def test_debug_frame_rows_match_readelf(tmp_path: Path) -> None:
    """GCC without unwind tables but with -g puts CFI in .debug_frame (CIE version and layout differ)."""
    source = tmp_path / "prog.c"
    source.write_text(
        "#include <stdlib.h>\n#include <string.h>\n"
        "__attribute__((noinline)) int f(int n) { char *p = alloca(n); memset(p, 1, n); return p[n / 2]; }\n"
        "__attribute__((noinline)) long g(long a, long b) { long s = 0; for (long i = a; i < b; i++) s += f(i); "
        "return s; }\n"
        "int main(int argc, char **argv) { return (int)g(argc, 100); }\n"
    )
    binary = tmp_path / "prog"
    subprocess.run(["gcc", "-O2", "-g", "-fno-asynchronous-unwind-tables", "-o", str(binary), str(source)], check=True)
    check_against_readelf(str(binary), ".debug_frame", 8)
    assert any(row.cfa_kind == CfaKind.RBP for row in build_table(str(binary)))  # alloca: f keeps a frame pointer


def test_gaps_between_functions_stop_the_walk() -> None:
    fdes = readelf_fdes(LIBC)
    table = build_table(LIBC)
    ends = {end for _, end, _ in fdes}
    begins = {begin for begin, _, _ in fdes}
    gap = min(end for end in ends if end not in begins)
    row = table.lookup(gap)
    assert row is not None and row.cfa_kind == CfaKind.NO_FDE
    assert table.lookup(min(begins) - 1) is None


def test_the_plt_expression_is_recognised() -> None:
    table = build_table(LIBC)
    plt_rows = [row for row in table if row.cfa_kind == CfaKind.PLT]
    assert plt_rows, "libc's .plt FDE"
    assert all((row.cfa_offset, row.param, row.ra_offset) == (8, 11, -8) for row in plt_rows)


@pytest.mark.parametrize(("flags", "threshold"), [(["-Wl,-z,lazy"], 11), (["-Wl,-z,lazy", "-Wl,-z,ibtplt"], 9)])
def test_both_plt_forms_the_linker_emits(tmp_path: Path, flags: list[str], threshold: int) -> None:
    """Lazy-binding .plt entries push before jumping: the CFA depends on where in the 16-byte entry rip is."""
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    binary = tmp_path / "hello"
    subprocess.run(["gcc", "-O2", *flags, "-o", str(binary), str(source)], check=True)
    check_against_readelf(str(binary), ".eh_frame", 3)
    plt_rows = [row for row in build_table(str(binary)) if row.cfa_kind == CfaKind.PLT]
    assert [(row.cfa_offset, row.param) for row in plt_rows] == [(8, threshold)]
