"""Serve MathJax from the built site itself, so maths renders with no network at read time.

Why fetch at build time instead of vendoring: the bundle is 2.2 MB of minified third-party code, and
committing it would put that weight in every clone and diff for a file nobody edits. The npm registry
is reachable from every developer and CI machine, ``npm pack`` fetches one pinned 6 MB tarball in a few
seconds, and the result is cached (``~/.cache/tensorpeft-docs``), so rebuilds need no network at all.

Why ``es5/tex-svg-full.js`` of MathJax 3.2.2:

- SVG output draws glyphs as paths, so no web fonts are loaded (browsers restrict font loads from
  ``file://`` pages; the CHTML output would need 20-odd woff files next to it);
- the ``-full`` bundle contains every TeX extension, so nothing is loaded on demand at read time;
- one file, checked against a pinned SHA-256 after download. MathJax is Apache-2.0; its LICENSE is
  shipped next to the script in ``_static/mathjax/``.

Offline machines can point ``TENSORPEFT_MATHJAX`` at a copy of ``tex-svg-full.js``. Builds that do not
need rendered maths (the test suite's reference build) pass ``-D tensorpeft_mathjax=0``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

MATHJAX_VERSION = "3.2.2"
BUNDLE = "tex-svg-full.js"
# SHA-256 of package/es5/tex-svg-full.js and package/LICENSE in mathjax-3.2.2.tgz (npm registry).
PINNED = {
    BUNDLE: "a4354ff94fd868aea0cc6eaaa79a57fda0588646fc46ee3700a349ee0a11cbe6",
    "LICENSE": "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30",
}
MEMBERS = {BUNDLE: f"package/es5/{BUNDLE}", "LICENSE": "package/LICENSE"}
# Relative to the site's _static directory.
MATHJAX_PATH = f"mathjax/{BUNDLE}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_root() -> Path:
    """Where the fetched bundle is kept between builds."""
    base = os.environ.get("TENSORPEFT_DOCS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tensorpeft-docs"
    )
    return Path(base) / f"mathjax-{MATHJAX_VERSION}"


def _cached_ok(static_dir: Path) -> bool:
    target = static_dir / "mathjax"
    return all((target / name).is_file() and _sha256(target / name) == digest for name, digest in PINNED.items())


def _fetch_with_npm(static_dir: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise ExtensionError(
            f"MathJax {MATHJAX_VERSION} is needed to render maths offline and is fetched with npm, "
            "but `npm` is not on PATH. Install it (apt-get install -y npm), or set TENSORPEFT_MATHJAX to a "
            f"local copy of {BUNDLE}, or build with -D tensorpeft_mathjax=0 (maths then stays raw LaTeX)."
        )
    with tempfile.TemporaryDirectory(prefix="tensorpeft-mathjax-") as tmp:
        cmd = [npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--silent", "--pack-destination", tmp]
        logger.info("fetching MathJax %s with npm (cached in %s)", MATHJAX_VERSION, static_dir)
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise ExtensionError(f"`{' '.join(cmd)}` failed: {detail.strip()}") from exc
        tarballs = list(Path(tmp).glob("mathjax-*.tgz"))
        if len(tarballs) != 1:
            raise ExtensionError(f"`npm pack` left {len(tarballs)} tarballs in {tmp}, expected one.")
        staging = Path(tmp) / "mathjax"
        staging.mkdir()
        with tarfile.open(tarballs[0]) as tar:
            for name, member in MEMBERS.items():
                source = tar.extractfile(member)
                if source is None:
                    raise ExtensionError(f"{tarballs[0].name} has no file {member}.")
                (staging / name).write_bytes(source.read())
        for name, digest in PINNED.items():
            got = _sha256(staging / name)
            if got != digest:
                raise ExtensionError(f"MathJax {name} has SHA-256 {got}, expected the pinned {digest}.")
        # Replace the cache in one rename, so an interrupted fetch never leaves half a copy behind.
        static_dir.mkdir(parents=True, exist_ok=True)
        final = static_dir / "mathjax"
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(staging), str(final))


def ensure_mathjax() -> Path:
    """Return a directory whose ``mathjax/`` holds the bundle and its LICENSE (fetching if needed)."""
    override = os.environ.get("TENSORPEFT_MATHJAX")
    if override:
        bundle = Path(override)
        if not bundle.is_file():
            raise ExtensionError(f"TENSORPEFT_MATHJAX={override!r} is not a file.")
        static_dir = Path(tempfile.mkdtemp(prefix="tensorpeft-mathjax-"))
        (static_dir / "mathjax").mkdir()
        shutil.copyfile(bundle, static_dir / "mathjax" / BUNDLE)
        return static_dir
    static_dir = cache_root()
    if not _cached_ok(static_dir):
        _fetch_with_npm(static_dir)
    return static_dir


def _on_config_inited(app, config) -> None:
    config.mathjax_path = MATHJAX_PATH
    if not config.tensorpeft_mathjax or str(config.tensorpeft_mathjax).lower() in {"0", "false", "no"}:
        logger.info("tensorpeft_mathjax is off: maths is left as LaTeX source for MathJax that is not shipped")
        return
    config.html_static_path = [*config.html_static_path, str(ensure_mathjax())]


def setup(app):
    app.add_config_value("tensorpeft_mathjax", True, "html")
    # After conf.py, before the builder copies static files.
    app.connect("config-inited", _on_config_inited)
    return {"version": MATHJAX_VERSION, "parallel_read_safe": True, "parallel_write_safe": True}
