"""The front-end packages the UI serves, copied from npm's node_modules into static/vendor.

`package.json` and its lock pin the versions; `make assets` runs `npm ci` and then
`python -m tessera.web.vendor build`. Nothing in static/vendor is committed; a built wheel
carries it. `missing()` lets the server say plainly when the copy was never made.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "vendor"

# destination under static/vendor → source under node_modules
FILES: dict[str, str] = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    # The CSP build evaluates no strings, so the pages need no 'unsafe-eval'.
    "alpine-csp.min.js": "@alpinejs/csp/dist/cdn.min.js",
    "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
    "sortable.min.js": "sortablejs/Sortable.min.js",
    "swagger-ui/swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
    "swagger-ui/swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
    "swagger-ui/favicon-32x32.png": "swagger-ui-dist/favicon-32x32.png",
}


def missing(vendor: Path = VENDOR) -> list[str]:
    """The vendored files that are not there (empty when the UI is complete)."""
    return [name for name in FILES if not (vendor / name).is_file()]


def build(node_modules: Path, vendor: Path = VENDOR) -> list[str]:
    """Copy every file of FILES; raise FileNotFoundError naming the first one npm did not
    install (then `npm ci` did not run, or package.json lost a package)."""
    copied = []
    for name, source in FILES.items():
        origin = node_modules / source
        if not origin.is_file():
            raise FileNotFoundError(
                f"{origin} is missing: run `npm ci` at the repository root first"
            )
        target = vendor / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, target)
        copied.append(name)
    return copied


def main(argv: list[str]) -> int:
    if argv[1:2] != ["build"]:
        print("usage: python -m tessera.web.vendor build [NODE_MODULES]", file=sys.stderr)
        return 2
    node_modules = Path(argv[2]) if len(argv) > 2 else Path("node_modules")
    try:
        copied = build(node_modules)
    except FileNotFoundError as exc:
        print(f"assets: {exc}", file=sys.stderr)
        return 1
    print(f"assets: copied {len(copied)} files into {VENDOR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
