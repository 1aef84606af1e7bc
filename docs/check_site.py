"""Check the built documentation site the way a reader sees it, in headless Chromium.

Usage::

    python docs/check_site.py [--install-browser] [SITE_DIR]      # default SITE_DIR: docs/_build/html

Checks, each failing the run with a list of what is wrong:

1. **Links.** Every relative ``href``/``src`` of every built HTML page points to a file that exists,
   and every ``#fragment`` of an internal link to an ``id`` (or ``name``) on the target page.
2. **Reference.** Every name in every public ``__all__`` is in the site's object inventory
   (``objects.inv``) — directly, or as the object it re-exports.
3. **Maths.** Every page with maths is loaded in headless Chromium and its DOM dumped after MathJax ran:
   every maths element must have become a MathJax container, no raw ``\\(``/``\\[``/``$$`` LaTeX may be
   left in the text, and MathJax must report no TeX error.
4. **Screenshots** of the landing page and the Tucker-2 page go to ``SITE_DIR/../screenshots/``.

``--install-browser`` installs Debian's ``chromium`` with apt-get when no Chromium is on PATH (CI).
"""

from __future__ import annotations

import argparse
import html.parser
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SCREENSHOTS = {"index.html": "landing.png", "guide/tucker2.html": "tucker2.png"}
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
]


# ---------------------------------------------------------------------------------------------- HTML
class _Page(html.parser.HTMLParser):
    """Links, ids, and the visible text of one page (script, style, code and pre left out)."""

    SKIP_TEXT = frozenset({"script", "style", "pre", "code", "textarea", "svg", "title"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self.math_elements = 0
        self.mathjax_containers = 0
        self.mathjax_errors: list[str] = []
        self._skip_depth = 0
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) is not None:
                self.links.append((tag, attrs[key]))
        classes = (attrs.get("class") or "").split()
        if "math" in classes and tag in ("span", "div"):
            self.math_elements += 1
        if tag == "mjx-container":
            self.mathjax_containers += 1
        node = attrs.get("data-mml-node")
        if tag == "mjx-merror" or node == "merror" or "data-mjx-error" in attrs:
            self.mathjax_errors.append(attrs.get("data-mjx-error") or "TeX syntax error")
        if node == "mtext" and attrs.get("fill") == "red":  # MathJax's rendering of an unknown macro
            self.mathjax_errors.append("undefined TeX macro (shown in red)")
        if tag in self.SKIP_TEXT:
            self._skip_depth += 1
        if tag not in VOID:
            self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self._stack:
            top = self._stack.pop()
            if top in self.SKIP_TEXT:
                self._skip_depth -= 1
            if top == tag:
                break

    def handle_data(self, data):
        if self._skip_depth == 0:
            self.text.append(data)


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


# --------------------------------------------------------------------------------------------- links
def check_links(site: Path) -> list[str]:
    """Broken relative links and fragments across every HTML page of ``site``."""
    pages = {p: parse(p.read_text(encoding="utf-8")) for p in site.rglob("*.html")}
    problems = []
    for path, page in sorted(pages.items()):
        for tag, link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("//", "mailto:", "data:", "javascript:")):
                continue  # external: not this check's business (the site must build offline, not link offline)
            if not parts.path:
                target = path
            else:
                target = (path.parent / unquote(parts.path)).resolve()
                if target.is_dir():
                    target = target / "index.html"
            where = f"{path.relative_to(site)}: <{tag}> {link!r}"
            if not target.exists():
                problems.append(f"{where}: {target} does not exist")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                target_page = pages.get(target) or parse(target.read_text(encoding="utf-8"))
                if fragment not in target_page.ids:
                    problems.append(f"{where}: no id {fragment!r} in {target.relative_to(site)}")
    if not pages:
        problems.append(f"no HTML pages under {site}")
    return problems


# ----------------------------------------------------------------------------------------- reference
def read_inventory(path: Path) -> set[str]:
    """Full names of the Python objects in a Sphinx ``objects.inv`` (format version 2)."""
    data = path.read_bytes()
    lines = data.split(b"\n", 4)
    if not lines[0].startswith(b"# Sphinx inventory version 2"):
        raise ValueError(f"{path} is not a Sphinx v2 inventory")
    body = zlib.decompress(lines[4]).decode("utf-8")
    names = set()
    for line in body.splitlines():
        m = re.match(r"(.+?)\s+(\S+):(\S+)\s+(-?\d+)\s+", line)
        if m and m.group(2) == "py":
            names.add(m.group(1))
    return names


def public_names() -> list[tuple[str, str]]:
    """``(module, name)`` for every name in the ``__all__`` of every importable public module."""
    queue = ["tensorpeft", "tensorpeft.decomp", "tensorpeft.nn", "tensorpeft.testing", "tensorpeft.gallery"]
    seen, out = set(), []
    while queue:
        modname = queue.pop(0)
        if modname in seen:
            continue
        seen.add(modname)
        spec = importlib.util.find_spec(modname)
        if spec is None or spec.origin in (None, "namespace"):
            continue  # planned, not written yet
        module = importlib.import_module(modname)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            out.append((modname, name))
            if inspect.ismodule(obj) and obj.__name__.startswith("tensorpeft"):
                queue.append(obj.__name__)
    return out


def check_reference(site: Path) -> list[str]:
    """Public names that the built reference does not document."""
    sys.path.insert(0, str(ROOT))
    documented = read_inventory(site / "objects.inv")
    documented_objects = {}
    for full in documented:
        module, _, attr = full.rpartition(".")
        try:
            documented_objects.setdefault(id(getattr(importlib.import_module(module), attr)), full)
        except (ImportError, AttributeError, ValueError):
            continue
    problems = []
    for module, name in public_names():
        full = f"{module}.{name}"
        obj = getattr(importlib.import_module(module), name)
        if inspect.ismodule(obj):
            ok = obj.__name__ in documented
        elif inspect.isclass(obj) or callable(obj):
            ok = full in documented or id(obj) in documented_objects
        else:
            ok = full in documented
        if not ok:
            problems.append(f"{full} is in __all__ but not in the API reference (objects.inv)")
    return problems


# ------------------------------------------------------------------------------------------- browser
def find_browser(install: bool) -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if not install:
        raise SystemExit("no Chromium on PATH; install Debian's `chromium` or pass --install-browser")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit("no Chromium on PATH, and apt-get as root is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing chromium with apt-get ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
        check=True,
        env=env,
        timeout=900,
        stdout=subprocess.DEVNULL,
    )
    path = shutil.which("chromium")
    if not path:
        raise SystemExit("apt-get installed chromium, but it is not on PATH")
    return path


def run_browser(browser: str, url: str, *extra: str, timeout: int = 120) -> str:
    with tempfile.TemporaryDirectory(prefix="tensorpeft-chromium-") as profile:
        proc = subprocess.run(
            [browser, *CHROME_FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode} on {url}: {proc.stderr[-2000:]}")
    return proc.stdout


RAW_LATEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$")


def check_math_page(browser: str, site: Path, page: Path) -> list[str]:
    dom = run_browser(browser, page.as_uri(), "--dump-dom")
    rendered = parse(dom)
    name = page.relative_to(site)
    problems = []
    if rendered.mathjax_containers < rendered.math_elements:
        problems.append(
            f"{name}: {rendered.math_elements} maths elements but {rendered.mathjax_containers} rendered by MathJax"
        )
    raw = RAW_LATEX.findall("".join(rendered.text))
    if raw:
        snippet = "".join(rendered.text)
        at = RAW_LATEX.search(snippet).start()
        problems.append(f"{name}: raw LaTeX left in the page, e.g. {snippet[max(0, at - 40) : at + 60]!r}")
    problems += [f"{name}: MathJax error: {err}" for err in rendered.mathjax_errors]
    return problems


def check_math(browser: str, site: Path) -> tuple[int, list[str]]:
    pages = [p for p in sorted(site.rglob("*.html")) if 'class="math' in p.read_text(encoding="utf-8")]
    problems: list[str] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for result in pool.map(lambda p: check_math_page(browser, site, p), pages):
            problems += result
    return len(pages), problems


def screenshots(browser: str, site: Path) -> list[Path]:
    out_dir = site.parent / "screenshots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for page, png in SCREENSHOTS.items():
        target = out_dir / png
        run_browser(browser, (site / page).as_uri(), f"--screenshot={target}", "--window-size=1280,1600")
        if not target.is_file() or target.stat().st_size < 10_000:
            raise RuntimeError(f"screenshot of {page} missing or blank: {target}")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("site", nargs="?", default=str(DOCS / "_build" / "html"), help="built HTML site")
    parser.add_argument("--install-browser", action="store_true", help="apt-get install chromium if missing")
    args = parser.parse_args(argv)
    site = Path(args.site).resolve()
    if not (site / "index.html").is_file():
        print(f"no built site at {site}; run `make docs` first", file=sys.stderr)
        return 2

    failures = {"links": check_links(site)}
    print(f"links: {len(failures['links'])} broken", flush=True)
    failures["reference"] = check_reference(site)
    print(f"reference: {len(failures['reference'])} public names missing", flush=True)
    browser = find_browser(args.install_browser)
    count, failures["maths"] = check_math(browser, site)
    print(f"maths: {count} pages checked in {Path(browser).name}, {len(failures['maths'])} problems", flush=True)
    for shot in screenshots(browser, site):
        print(f"screenshot: {shot}")

    problems = [f"[{kind}] {p}" for kind, items in failures.items() for p in items]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"check_site: {len(problems)} problems", file=sys.stderr)
        return 1
    print("check_site: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
