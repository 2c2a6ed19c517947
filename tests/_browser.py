"""A real headless browser for the tests of the pages Atlas serves: Debian's ``chromium``.

``await dump_dom(url)`` loads the page as a browser does (its own User-Agent and ``Accept``
headers, scripts run, the Content-Security-Policy enforced) and returns the DOM after load;
``await screenshot(url, path)`` renders it to a PNG. Both run chromium as a subprocess with a
fresh profile, so tests do not share cookies or caches. Failing, never skipping, when chromium is
missing: the README set-up installs it (``scripts/setup --system``).
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
import trio

_TIMEOUT = 60  # seconds for one page load, under a loaded CI machine


def chromium_binary() -> str:
    """The ``chromium`` executable, or a test failure naming the set-up step."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "the 'chromium' executable is missing: run the README set-up "
            "(Debian/Ubuntu: apt-get install -y chromium) before the test suite",
            pytrace=False,
        )
    return found


def _argv(extra: list[str], profile: str) -> list[str]:
    return [
        chromium_binary(),
        "--headless",
        "--no-sandbox",  # the tests run as root in a container; the page is our own
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--window-size=412,1400",
        *extra,
    ]


async def dump_dom(url: str) -> str:
    """The page's DOM (serialized HTML) after load, as chromium saw it."""
    with tempfile.TemporaryDirectory() as profile, trio.fail_after(_TIMEOUT):
        done = await trio.run_process(
            _argv(["--virtual-time-budget=3000", "--dump-dom", url], profile),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


async def screenshot(url: str, path: trio.Path) -> bytes:
    """Render ``url`` to the PNG ``path`` and return its bytes."""
    with tempfile.TemporaryDirectory() as profile, trio.fail_after(_TIMEOUT):
        done = await trio.run_process(
            _argv([f"--screenshot={path}", url], profile),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0 and await path.exists(), done.stderr.decode(errors="replace")[-2000:]
    return await path.read_bytes()
