"""The playground page end to end in headless Chromium (Debian's chromium and chromium-driver).

Skipped when chromium, its driver or selenium is missing; .ci/run installs them.
"""

import os
import shutil

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("needs chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tinygen.serving import ServerSettings  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def set_slider(driver, element_id, value):
    driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                          "e.dispatchEvent(new Event('input'));", element_id, str(value))


def test_tokens_stream_into_the_page_with_probabilities_on_hover(browser, gpt2_gen, serve_on_loopback):
    with serve_on_loopback(gpt2_gen) as (url, _):
        browser.get(url + "/")
        assert browser.title == "tinygen playground"
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("Once upon a time")
        set_slider(browser, "temperature", 0.8)
        set_slider(browser, "top_p", 0.9)
        set_slider(browser, "max_tokens", 25)
        assert browser.find_element(By.ID, "temperature-value").text == "0.80"
        browser.find_element(By.ID, "seed").send_keys("42")
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.ID, "output").get_attribute("data-done") == "true")

        [want] = gpt2_gen.generate("Once upon a time", seed=42, temperature=0.8, top_p=0.9, max_new_tokens=25,
                                   return_probs=True)
        spans = browser.find_elements(By.CSS_SELECTOR, "#output .tok")
        text = browser.execute_script(
            "return [...document.querySelectorAll('#output .tok')].map(s => s.textContent).join('')")
        assert text == str(want)
        assert browser.find_element(By.CSS_SELECTOR, "#output .prompt").text == "Once upon a time"
        status = browser.find_element(By.ID, "status").text
        assert "seed 42" in status and want.finish_reason in status

        probs = [float(s.get_attribute("data-prob")) for s in spans]
        assert all(0 < p <= 1 for p in probs)
        # Hovering a token shows its probability (and its alternatives).
        visible = next(i for i, s in enumerate(spans) if s.text.strip())
        ActionChains(browser).move_to_element(spans[visible]).perform()
        tooltip = browser.find_element(By.ID, "tooltip")
        WebDriverWait(browser, 5).until(lambda d: tooltip.is_displayed())
        first_prob = browser.execute_script(
            "return JSON.parse(arguments[0].dataset.tokens)[0].prob", spans[visible])
        assert f"p = {first_prob:.4f}" in tooltip.text
        token_ids = [t for s in spans for t in browser.execute_script(
            "return JSON.parse(arguments[0].dataset.tokens).map(t => t.id)", s)]
        assert token_ids == [tp.token_id for tp in want.token_probs]


def test_a_prompt_over_the_size_limit_is_explained(browser, gpt2_gen, serve_on_loopback):
    """Over the limit: the server's error; over twice it, the reason uvicorn closed the socket."""
    with serve_on_loopback(gpt2_gen, ServerSettings(max_body_bytes=2000)) as (url, _):
        browser.get(url + "/")
        for length, said in [(2500, "error: the message is over the limit of 2000 bytes"),
                             (5000, "connection closed: frame exceeds limit of 4000 bytes")]:
            browser.execute_script("document.getElementById('prompt').value = 'x'.repeat(arguments[0])",
                                   length)
            browser.find_element(By.ID, "generate").click()
            status = browser.find_element(By.ID, "status")
            WebDriverWait(browser, 30).until(lambda d: status.text.startswith(("error", "connection")))
            assert status.text == said
            assert browser.find_element(By.ID, "generate").is_enabled()
