"""The two-function C workload recorded by the real sampler, drawn, and looked at in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from antiprof_flamegraph.testing import Chromium, centre, frames, named, require_chromium, widest_path

from antiprof_core.codec import window_from_dict
from antiprof_core.testing import antiprof_command, require_bpf
from antiprof_core.testing.workloads import TWO_FUNCTION_SHARES, build_two_function_workload

pytestmark = pytest.mark.bpf
SCREENSHOT_DIR_ENV = "ANTIPROF_SCREENSHOT_DIR"  # set it to keep the screenshot (the README's is made so)


def test_real_profile_hot_function_zoom_search_and_screenshot(tmp_path: Path) -> None:
    require_bpf()
    require_chromium()
    program = build_two_function_workload(tmp_path / "workload")
    workload = subprocess.Popen([str(program), "120"])
    out, json_path = tmp_path / "fg", tmp_path / "windows.jsonl"
    config = tmp_path / "antiprof.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [sampler]
            frequency_hz = 199
            window = "1s"
            pids = [{workload.pid}]

            [consumers.flamegraph]
            output_dir = "{out}"
            formats = ["html", "folded", "svg"]
            title = "two_functions"

            [consumers.json]
            path = "{json_path}"
            """
        )
    )
    try:
        time.sleep(0.2)  # past the loader, into main's loop
        done = subprocess.run(
            antiprof_command("run", "-c", str(config), "--duration", "4s"), capture_output=True, text=True, timeout=120
        )
    finally:
        workload.kill()
        workload.wait()
    assert done.returncode == 0, done.stderr
    windows = [window_from_dict(json.loads(line)) for line in json_path.read_text().splitlines()]
    total = sum(w.sample_count for w in windows)
    truth = {
        name: sum(s.count for w in windows for s in w.samples if any(f.symbol == name for f in s.stack)) / total
        for name in TWO_FUNCTION_SHARES
    }
    folded = (out / "flamegraph.folded").read_text().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in folded) == total
    assert len(list(out.glob("*.svg"))) >= 4 and len(list(out.glob("antiprof-*.html"))) >= 4

    with Chromium(width=1200, height=420) as browser:
        page = browser.open(out / "flamegraph.html")
        all_frames = frames(page)
        root = named(page, "all")
        page.hover(*centre(named(page, "work_heavy")))
        assert page.wait_for("document.getElementById('details').textContent.startsWith('work_heavy (two_functions)')")
        shot = page.screenshot(tmp_path / "flamegraph.png")
        assert shot.stat().st_size > 10_000
        if os.environ.get(SCREENSHOT_DIR_ENV):
            shutil.copy(shot, Path(os.environ[SCREENSHOT_DIR_ENV]) / "flamegraph.png")

        path = widest_path(all_frames)
        assert path[:2] == ["all", program.name]
        assert path.index("work_heavy") == path.index("cycle") + 1  # the hot function is the widest callee
        assert "work_light" not in path
        heavy = named(page, "work_heavy")
        assert abs(heavy["width"] / root["width"] - truth["work_heavy"]) < 0.005
        assert abs(heavy["width"] / root["width"] - TWO_FUNCTION_SHARES["work_heavy"]) < 0.05

        page.click(*centre(heavy))
        zoomed = named(page, "work_heavy")
        assert abs(zoomed["width"] - root["width"]) < 1 and zoomed["text"] == "work_heavy"
        assert not [f for f in frames(page) if f["text"] == "work_light"]

        page.evaluate("document.getElementById('search').focus()")
        page.type_text("work_heavy")
        shown = page.wait_for("document.getElementById('match').textContent")
        covered = round(truth["work_heavy"] * total)
        assert shown == f"Matched: {100 * truth['work_heavy']:.2f}% ({covered:,} of {total:,} samples)"
        assert page.errors == []
