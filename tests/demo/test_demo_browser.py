"""``python -m moee demo`` served on a free localhost port and driven in headless Chromium
(Debian's ``chromium`` through Playwright's ``executable_path``)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import av
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium "
                                "(apt-get install -y chromium)")
TIMEOUT_MS = 120_000
SPEECH_FRAMES = 13  # ceil(0.5 s × 25 fps)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser session on the demo page."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    page.locator("#generate").wait_for()
    yield page
    context.close()


def upload(page, image: Path, audio: Path) -> None:
    """Put a portrait and a speech file into the page's upload fields."""
    page.locator("#portrait input[type=file]").set_input_files(str(image))
    page.locator("#speech input[type=file]").set_input_files(str(audio))
    page.locator("#portrait img").wait_for()
    page.locator("#speech audio, #speech wave, #speech .waveform-container").first.wait_for(
        state="attached")


def condition(page) -> str:
    return page.locator("#condition textarea, #condition input").first.input_value()


def generate(page) -> tuple[str, float]:
    """Click Generate, see the pipeline's progress, wait for the video; its URL and the time."""
    started = time.perf_counter()
    page.locator("#generate").click()
    page.get_by_text(re.compile(r"clip \d+/\d+ · step \d+/\d+")).first.wait_for()
    video = page.locator("#video video")
    video.wait_for()
    return video.get_attribute("src"), time.perf_counter() - started


def session_folders(server) -> list[Path]:
    return sorted((server.root / "sessions").glob("*"))


def output_files(server) -> set[Path]:
    return set((server.root / "sessions").glob("*/*"))


def test_upload_pick_happy_generate_and_play(page, server, demo_files, tmp_path):
    upload(page, demo_files / "astronaut.jpg", demo_files / "speech.wav")
    page.locator("#label input").click()
    page.get_by_role("option", name="happy", exact=True).click()
    page.wait_for_function("() => document.querySelector('#condition textarea, #condition "
                           "input').value === 'happy'")
    src, seconds = generate(page)
    print(f"one generation in the page (tiny model, 13 frames): {seconds:.1f} s")
    duration = page.locator("#video video").evaluate(
        """async (video) => {
            video.muted = true;
            await video.play();
            await new Promise((done) => setTimeout(done, 300));
            return [video.duration, video.currentTime];
        }""")
    assert duration[0] > 0 and duration[1] > 0, duration
    mp4 = tmp_path / "served.mp4"
    mp4.write_bytes(page.request.get(src).body())
    with av.open(str(mp4)) as container:
        assert container.streams.audio, "the served mp4 has no audio stream"
        assert sum(1 for _ in container.decode(video=0)) == SPEECH_FRAMES
    assert server.tracks[-1].conditions[0].name == "happy"
    assert re.search(r"13 frames .* for happy in", page.locator("#report").inner_text())
    assert page.locator("#strip img").get_attribute("src")
    folder = next(f for f in session_folders(server) if list(f.glob("*.mp4")))
    page.context.close()  # the session ends: its outputs and uploads go
    deadline = time.monotonic() + 10
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not folder.exists()
    assert not list(server.root.glob("*/astronaut.jpg")), "the upload outlived its session"


def test_mix_sliders_write_the_condition_the_pipeline_gets(page, server, demo_files):
    page.get_by_role("tab", name="Mix").click()
    written = ("() => document.querySelector('#condition textarea, #condition input').value "
               "=== 'happy:0.7,surprised:0.3'")
    for attempt in range(3):  # a slider moved before the page's handlers attach writes nothing
        page.locator("#mix-happy input[type=range]").fill("0.7")
        page.locator("#mix-surprised input[type=range]").fill("0.3")
        try:
            page.wait_for_function(written, timeout=20_000)
            break
        except sync_api.TimeoutError:
            if attempt == 2:
                raise
    upload(page, demo_files / "astronaut.jpg", demo_files / "speech.wav")
    generate(page)
    received = server.tracks[-1].conditions[0]
    assert received.kind == "mixture"
    assert received.weights == pytest.approx((0, 0, 0, 0.7, 0, 0.3))


def test_a_portrait_without_a_face_is_one_message(page, server, demo_files):
    upload(page, demo_files / "grey.png", demo_files / "speech.wav")
    tracks, outputs = len(server.tracks), output_files(server)
    page.locator("#generate").click()
    page.get_by_text(re.compile("no face found in the image; give a portrait")).first.wait_for()
    assert "Traceback" not in page.content()
    assert len(server.tracks) == tracks  # nothing reached the network
    assert output_files(server) == outputs  # and nothing was written


def test_one_generation_at_a_time_the_next_is_shown_its_place(browser, page, server,
                                                              demo_files):
    other = browser.new_context().new_page()
    other.set_default_timeout(TIMEOUT_MS)
    other.goto(server.url)
    for each in (page, other):
        upload(each, demo_files / "astronaut.jpg", demo_files / "speech.wav")
    page.locator("#generate").click()
    page.get_by_text(re.compile(r"clip \d+/\d+ · step")).first.wait_for()
    other.locator("#generate").click()
    other.get_by_text(re.compile(r"queue: \d+/\d+")).first.wait_for()
    for each in (page, other):
        each.locator("#video video").wait_for()
    other.context.close()
    assert server.peak == 1
