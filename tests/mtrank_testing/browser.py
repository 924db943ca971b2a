"""Test helper: headless Chromium for tests of HTML output, a screenshot and the DOM after
the page's scripts ran. `make test` installs Debian's chromium (the `browser`
target); without it these tests fail, saying so, rather than skip."""
from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
import tempfile
from typing import List, Tuple

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


class _Sections(html.parser.HTMLParser):
    """Per <section id=...> of a page: its text outside headings, its
    tables and how many body rows each has, and its images."""

    def __init__(self):
        super().__init__()
        self.sections = {}  # id: {"text": str, "tables": [rows], "images": int}
        self._current = None
        self._in_heading = self._in_tbody = False

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self._current = dict(attrs).get("id", f"section-{len(self.sections)}")
            self.sections[self._current] = {"text": "", "tables": [], "images": 0}
        elif self._current is None:
            return
        elif tag in ("h1", "h2", "h3"):
            self._in_heading = True
        elif tag == "table":
            self.sections[self._current]["tables"].append(0)
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self.sections[self._current]["tables"][-1] += 1
        elif tag == "img":
            self.sections[self._current]["images"] += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self._current = None
        elif tag in ("h1", "h2", "h3"):
            self._in_heading = False
        elif tag == "tbody":
            self._in_tbody = False

    def handle_data(self, data):
        if self._current is not None and not self._in_heading:
            self.sections[self._current]["text"] += data.strip()


def sections(dom: str) -> dict:
    """{section id: {"text", "tables" (body rows of each), "images"}} of a page."""
    parser = _Sections()
    parser.feed(dom)
    return parser.sections


def empty_sections(dom: str) -> List[str]:
    """The <section>s of a page a reader would find empty, each with why:
    nothing under its heading, or a table without rows."""
    empty = []
    for name, content in sections(dom).items():
        if not content["text"] and not content["images"]:
            empty.append(f"{name}: nothing under its heading")
        empty += [f"{name}: table {i} has no rows"
                  for i, rows in enumerate(content["tables"]) if rows == 0]
    return empty
