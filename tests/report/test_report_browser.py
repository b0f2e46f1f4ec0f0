"""The report in a real browser: headless Chromium loads it from file://, its images decode
and are laid out, its tables are visible, and a screenshot is not blank.

Uses Debian's `chromium`; when it is missing the test tries `apt-get install -y chromium`
once (as root, with a timeout) and otherwise skips, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
)


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _find_chromium()
    if path:
        return path
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("chromium is not installed and apt-get is not available")
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            [apt, "install", "-y", "chromium"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(
            f"chromium missing; `apt-get install -y chromium` timed out ({INSTALL_TIMEOUT_S}s)"
        )
    path = _find_chromium()
    if proc.returncode != 0 or path is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"chromium missing and `apt-get install -y chromium` failed: {tail[0]}")
    return path


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env={**os.environ, "HOME": str(profile)},
    )
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def test_report_renders_in_chromium(chromium: str, full_report: Path, tmp_path: Path) -> None:
    url = full_report.resolve().as_uri()
    html = full_report.read_text(encoding="utf-8")
    n_img = html.count("<img")
    n_table = html.count("<table")
    assert n_img >= 8 and n_table >= 10

    # the DOM after load: the inline script counted decoded, laid-out images and visible tables
    dom = _run(chromium, tmp_path / "profile-dom", "--window-size=1200,3000", "--dump-dom", url)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', body.group(0))
    visible = re.search(r'data-tables-visible="(\d+)/(\d+)"', body.group(0))
    assert loaded and visible, f"load script did not run: {body.group(0)}"
    assert loaded.groups() == (str(n_img), str(n_img)), loaded.group(0)
    assert visible.groups() == (str(n_table), str(n_table)), visible.group(0)
    assert dom.stdout.count("<img") == n_img
    assert "TTPA run report: run-full" in dom.stdout

    # a screenshot: a PNG of the window size, neither blank nor a single colour
    shot = tmp_path / "shot.png"
    _run(
        chromium, tmp_path / "profile-shot", "--window-size=1200,3000", f"--screenshot={shot}", url
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 50_000, len(data)

    import matplotlib.image as mpimg
    import numpy as np

    px = np.asarray(mpimg.imread(str(shot)))[..., :3]
    assert px.shape[:2] == (3000, 1200), px.shape
    assert float(px.std()) > 0.05, px.std()
    non_bg = (np.abs(px - px[0, 0]).sum(axis=-1) > 0.1).mean()  # not the page background
    assert non_bg > 0.05, non_bg
    # colour from the plots (bars/lines), not only black text on white
    saturation = px.max(axis=-1) - px.min(axis=-1)
    assert (saturation > 0.3).mean() > 0.005
