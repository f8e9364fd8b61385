"""The vDSO's unwind table: built from the agent's own image, given to every 64-bit process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from antiprof_core.sources.unwind.processfiles import ProcessFiles
from antiprof_core.sources.unwind.vdso import VDSO_WORKER_PATH, is_64_bit_vdso, own_vdso_headers
from antiprof_core.sources.unwind.worker import load_or_build
from antiprof_core.symbolize import procfs
from antiprof_core.symbolize.elf import DEBUG_ROOT
from antiprof_core.testing.agent import wait_until


def test_the_table_comes_from_our_own_vdso_and_covers_its_code() -> None:
    headers = own_vdso_headers()
    assert headers is not None and headers.build_id
    result = load_or_build(VDSO_WORKER_PATH, None, str(DEBUG_ROOT), VDSO_WORKER_PATH, headers.build_id)
    assert result.table.build_id == headers.build_id
    [text] = headers.segments  # the vDSO is one segment, linked at 0
    assert len(result.table) > 0
    assert all(text.vaddr <= pc <= text.vaddr + text.file_size for pc in result.table.pcs)
    assert result.table.lookup(result.table.pcs[0]) is not None


def test_every_process_maps_it_where_its_own_vdso_is(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        wait_until(lambda: procfs.read_comm(sleeper.pid) == "sleep", what="sleep to be exec'd")
        # the kernel sets the new program's name before it maps the vDSO
        wait_until(lambda: [e for e in procfs.read_maps(sleeper.pid) if e.path == "[vdso]"], what="the vDSO mapped")
        [entry] = [e for e in procfs.read_maps(sleeper.pid) if e.path == "[vdso]"]
        assert is_64_bit_vdso(sleeper.pid, entry.start)
        mappings = ProcessFiles().mappings(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    [vdso] = [m for m in mappings if m.name == "[vdso]"]
    headers = own_vdso_headers()
    assert headers is not None
    assert (vdso.start, vdso.end, vdso.worker_path) == (entry.start, entry.end, VDSO_WORKER_PATH)
    assert vdso.file.build_id == headers.build_id
    assert vdso.load_bias == entry.start  # the vDSO's code is linked at 0
    assert [m.start for m in mappings] == sorted(m.start for m in mappings)
    assert any(m.name.endswith("/sleep") for m in mappings)


def test_a_bad_address_is_not_taken_for_a_vdso() -> None:
    assert not is_64_bit_vdso(os.getpid(), 0)
    assert not is_64_bit_vdso(2**22 + 1, 0x1000)  # no such process
