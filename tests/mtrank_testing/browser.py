"""Test helper: headless Chromium for tests of HTML output, a screenshot and the DOM after
the page's scripts ran. `make test` installs Debian's chromium (the `browser`
target); without it these tests fail, saying so, rather than skip."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Tuple

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--virtual-time-budget=10000"]

# Appended to a copy of the page: after load, records in the DOM whether the
# browser decoded every image (naturalWidth > 0) and how many there are.
IMAGE_PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var probe = document.createElement("div");
  probe.id = "image-probe";
  probe.setAttribute("data-images", String(images.length));
  probe.setAttribute("data-decoded", String(images.filter(function (i) {
    return i.complete && i.naturalWidth > 0; }).length));
  document.body.appendChild(probe);
});
</script>"""


def chromium_path() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        raise RuntimeError(
            f"headless chromium not found at {CHROMIUM}: run `make browser` (as root, installs "
            "Debian's chromium with apt-get) or set CHROMIUM to a chromium binary")
    return CHROMIUM


def _run(args, timeout: int = 120) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run([chromium_path(), *_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def render(html_path: str, out_dir: str, width: int = 1280, height: int = 2400
           ) -> Tuple[str, str]:
    """(DOM after load with the image probe, screenshot PNG path) of the page."""
    probed = os.path.join(out_dir, "probed.html")
    with open(html_path) as f:
        page = f.read()
    with open(probed, "w") as f:
        f.write(page.replace("</body>", IMAGE_PROBE + "</body>"))
    url = "file://" + os.path.abspath(probed)
    dom = _run(["--dump-dom", url]).stdout
    screenshot = os.path.join(out_dir, "screenshot.png")
    _run([f"--screenshot={screenshot}", f"--window-size={width},{height}",
          "file://" + os.path.abspath(html_path)])
    return dom, screenshot


def distinct_colours(png_path: str) -> int:
    """How many colours the screenshot holds (a blank page has one)."""
    from PIL import Image

    with Image.open(png_path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours is not None else 1 << 20
