"""A PNG of a run's viewer, as a browser draws it (Debian's chromium driven by Playwright).

    .venv/bin/python scripts/screenshot.py runs/gt-positions docs/images/positions-viewer.png [--edges 400] [--zoom-out 2]

Writes the run's ``circuit.html`` first when it is missing (``circuits export RUN --format html``
writes the same page)."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--edges", type=int, default=None, help="show the K strongest edges (the slider), not the kept circuit")
    ap.add_argument("--zoom-out", type=int, default=0, help="press the viewer's zoom-out button N times")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    html = args.run / "circuit.html"
    if not html.is_file():
        raise SystemExit(f"{html} is missing: run `circuits export {args.run} --format html` first")
    chromium = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None)
    if chromium is None:
        raise SystemExit("no chromium binary: `make browser` installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(html.resolve().as_uri())
            page.wait_for_selector("#count[data-edges]")
            if args.edges is not None:
                page.fill("#k-number", str(args.edges))
                page.press("#k-number", "Enter")
            for _ in range(args.zoom_out):
                page.click("#zoom-out")
            args.png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.png), full_page=True)
        finally:
            browser.close()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
