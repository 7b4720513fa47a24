"""The web demo in a real browser: seconds from clicking Generate to a playable video, and to
the pipeline's first sampled clip, for each offline example; optionally a screenshot of the page.

    python benchmarks/bench_demo.py --weights runs/tiny/weights --screenshot docs/demo.png

Without ``--weights`` the tiny network has random weights (the timings hold, the video is
noise). Needs Debian's chromium (``apt-get install -y chromium``) and the ``demo`` extra.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from jsonargparse import CLI  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from moee.demo.app import serve  # noqa: E402
from moee.demo.engine import DemoModel  # noqa: E402
from moee.models.moee_net import MoEENet  # noqa: E402

TIMEOUT_MS = 600_000


def random_weights(folder: Path) -> list[str]:
    """The tiny network's random weights as one safetensors file."""
    path = folder / "random.safetensors"
    save_file({k: v.clone() for k, v in MoEENet().state_dict().items()}, path)
    return [str(path)]


def wait_for_example(page, row) -> None:
    """Until the clicked example's portrait and condition are in the form: a click on
    Generate before then sends an empty portrait."""
    portrait = row.locator("img").first.get_attribute("src").rsplit("/", 1)[-1]
    headers = page.locator("thead th").all_inner_texts()
    column = next(i for i, header in enumerate(headers) if header.strip().startswith("Condition"))
    page.wait_for_function(
        "([portrait, condition]) => {"
        " const img = document.querySelector('#portrait img');"
        " const text = document.querySelector('#condition textarea, #condition input');"
        " return img && img.complete && img.src.endsWith('/' + portrait)"
        " && text && text.value === condition; }",
        arg=[portrait, row.locator("td").nth(column).inner_text().strip()])


def main(weights: str | None = None, screenshot: str | None = None,
         examples: int = 5) -> None:
    """Generate each of the first ``examples`` examples in the page and print the timings.

    Args:
        weights: trained weights: their folder or one file; default: random tiny weights.
        screenshot: write a PNG of the page with the first example's finished video.
        examples: how many of the page's examples to generate.
    """
    scratch = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    if not weights:  # on a thread that ends: no torch on the main thread, as in `moee demo`
        with ThreadPoolExecutor(1) as thread:
            weights = thread.submit(random_weights, scratch).result()[0]
    model = DemoModel([weights], "tiny", "cpu")
    if model.pipeline is None:
        raise SystemExit(f"error: {model.status}")
    server = serve(model, port=None, block=False, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(TIMEOUT_MS)
            started = time.perf_counter()
            page.goto(server.url)
            page.locator("#generate").wait_for()
            print(f"page ready in {time.perf_counter() - started:.1f} s")
            rows = page.locator("tbody tr")  # the examples' table
            rows.first.wait_for()
            print(f"{'example':<32} {'frames':>6} {'in the page':>12} {'first clip':>11}")
            for index in range(min(examples, rows.count())):
                rows.nth(index).click()
                wait_for_example(page, rows.nth(index))
                previous = page.locator("#report").inner_text()
                started = time.perf_counter()
                page.locator("#generate").click()
                page.wait_for_function(  # a new summary line and a loaded video
                    "(previous) => { const r = document.querySelector('#report').innerText;"
                    " const v = document.querySelector('#video video');"
                    " return v && v.readyState >= 1 && r !== previous"
                    " && /^\\d+ frames .* sampled after [\\d.]+ s$/.test(r.trim()); }",
                    arg=previous)
                seconds = time.perf_counter() - started
                report = page.locator("#report").inner_text()
                frames = re.search(r"(\d+) frames", report).group(1)
                first = re.search(r"after ([\d.]+) s", report).group(1)
                condition = page.locator("#condition textarea, #condition input").first
                print(f"{condition.input_value()[:32]:<32} {frames:>6} {seconds:>10.1f} s "
                      f"{first:>9} s")
                if index == 0 and screenshot:
                    page.locator("#video video").evaluate(
                        "(v) => new Promise((done) => { v.currentTime = v.duration / 2;"
                        " v.onseeked = done; })")
                    page.screenshot(path=screenshot, full_page=True)
                    print(f"wrote {screenshot}")
            browser.close()
    finally:
        server.close()
        model.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    CLI(main)
