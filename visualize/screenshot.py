"""A screenshot of a viewer page, the way a person sees it: headless Chromium opens the HTML
file written by `visualize.render(..., "model.html")` (or `graphnn view`), clicks the
first box whose text holds `--click` so the side panel opens, and saves a PNG.

    .venv/bin/graphnn view examples/mlp_digits.py --build loss_graph --grad
    .venv/bin/python -m visualize.screenshot examples/mlp_digits.html docs/img/viewer.png \\
        --click matmul

Needs Debian's chromium (/usr/bin/chromium) and Playwright (`pip install "graphnn[browser]"`;
no browser download: Playwright drives the installed chromium).
"""
import argparse
import shutil
import sys
from pathlib import Path

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def screenshot(html, png, click=None, width=1280, height=800):
    """Open `html` in headless Chromium, click the first box whose text holds `click` (if
    given), save the page to `png`; returns the path."""
    from playwright.sync_api import sync_playwright
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(Path(html).resolve().as_uri())
        page.click("#fit")
        if click:
            page.locator("#layout0 g.node", has_text=click).first.click()
        page.screenshot(path=str(png))
        browser.close()
    return png


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", help="a viewer page (model.html)")
    parser.add_argument("png", help="the screenshot to write")
    parser.add_argument("--click", default=None, help="open the panel of the first box "
                        "whose text holds this (e.g. matmul)")
    args = parser.parse_args(argv)
    print("wrote", screenshot(args.html, args.png, args.click))
    return 0


if __name__ == "__main__":
    sys.exit(main())
