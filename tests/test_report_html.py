"""report.html in a real headless browser (Debian's chromium through selenium): it loads without console errors
and without any request leaving the page, every plot is drawn, and the trials table sorts and filters. One
browser session serves every test of the module; one screenshot is kept in the test's temp dir."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from raysweep.experiment import metrics as M
from tests.test_report_support import make_experiment

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
                                reason="needs Debian's chromium and chromedriver (/usr/bin/chromium, "
                                "/usr/bin/chromedriver; scripts/setup.sh installs them)")
PLOTS = ["plot-parcoords", "plot-importance", "plot-pareto", "plot-curves-eval-loss", "plot-curves-train-loss"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from analysis.report_build import write_experiment_report

    root = make_experiment(tmp_path_factory.mktemp("report") / "exp", running=2)
    return write_experiment_report(root)


@pytest.fixture(scope="module")
def browser(page):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2000",
                 # parallel coordinates draw their lines with WebGL: software WebGL where there is no GPU
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        driver.get(page.as_uri())
        yield driver
    finally:
        driver.quit()


def _rows(driver) -> list[list[str]]:
    """The trials table's visible rows, as the reader sees them (cell texts, in display order)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#trials tbody tr')).filter(r => r.style.display !== 'none')"
        ".map(r => Array.from(r.cells).map(c => c.textContent));")


def _column(driver, name: str) -> int:
    heads = driver.execute_script("return Array.from(document.querySelectorAll('#trials th')).map(h => h.textContent)")
    return heads.index(name)


def test_the_page_loads_offline_without_console_errors(browser, page):
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    # nothing the page asked for left it: every request the browser made is the file itself or inline data
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file:", "data:", "blob:")) for u in urls), urls
    assert browser.execute_script("return performance.getEntriesByType('resource')"
                                  ".filter(e => /^https?:/.test(e.name)).length") == 0
    # plotly.js 3's "Share chart" button would upload a figure to Plotly Cloud: switched off in every plot
    titles = browser.execute_script("return Array.from(document.querySelectorAll('.modebar-btn'))"
                                    ".map(b => b.getAttribute('data-title'))")
    assert "Download plot as a PNG" in titles and not [t for t in titles if "Share" in (t or "")]
    html = page.read_text()
    assert not re.search(r"""<(?:script|link|img|iframe)[^>]+(?:src|href)=["']?https?://""", html)


def test_every_plot_is_rendered(browser, tmp_path):
    drawn = browser.execute_script(
        "return arguments[0].map(id => { const el = document.getElementById(id);"
        " return [id, !!el && el.classList.contains('js-plotly-plot'), el ? el.querySelectorAll('svg').length : 0,"
        " el && el.data ? el.data.length : 0]; })", PLOTS)
    for plot_id, is_plot, svgs, traces in drawn:
        assert is_plot and svgs > 0 and traces > 0, plot_id
    # the parallel coordinates have one axis per varying grid axis plus the metric, one line per finished trial
    dims = browser.execute_script("const d = document.getElementById('plot-parcoords').data[0];"
                                  "return [d.dimensions.map(x => x.label), d.dimensions[0].values.length]")
    assert dims == [["adapter.type", "adapter.r", "train.lr", "train.seed", M.EVAL_LOSS], 16]
    ticks = browser.execute_script("return document.getElementById('plot-parcoords').data[0].dimensions[2].ticktext")
    assert ticks == ["0.0001", "0.001"]
    assert browser.execute_script("return document.querySelectorAll('#plot-parcoords .axis').length") == 5
    # hovering the Pareto front shows the configuration: its points carry it as text
    texts = browser.execute_script("return document.getElementById('plot-pareto').data"
                                   ".find(t => t.name === 'Pareto front').text")
    assert texts and all("r=" in t and "seed(s)" in t for t in texts)
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert image.size[0] >= 1000 and len(colours) > 200  # a blank or unstyled page has a handful
    print(f"screenshot: {shot}")


def test_the_trials_table_sorts_by_the_clicked_header(browser):
    loss = _column(browser, M.EVAL_LOSS)
    header = browser.find_elements("css selector", "#trials th")[loss]
    header.click()
    values = [r[loss] for r in _rows(browser)]
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers) and len(numbers) == 19 and header.get_attribute("aria-sort") == "ascending"
    header.click()
    numbers = [float(r[loss]) for r in _rows(browser) if r[loss]]
    assert numbers == sorted(numbers, reverse=True) and header.get_attribute("aria-sort") == "descending"
    trial = _column(browser, "trial")
    browser.find_elements("css selector", "#trials th")[trial].click()
    assert [r[trial] for r in _rows(browser)] == [f"t{i:02d}" for i in range(19)]


def test_the_trials_table_filters_by_words_and_status(browser):
    from selenium.webdriver.support.ui import Select

    box = browser.find_element("id", "trials-filter")
    box.clear()
    box.send_keys("dora 16")
    rows = _rows(browser)
    assert len(rows) == 4 and all("dora" in r and "16" in r for r in rows)
    assert browser.find_element("id", "trials-count").text == "4 of 19 trial(s) shown"
    box.clear()
    box.send_keys("nonfinite")  # the reason column: the failed trial's error
    rows = _rows(browser)
    assert [r[1] for r in rows] == ["ERROR"] and "NonFiniteLossError" in rows[0][2]
    box.clear()
    box.send_keys(" ")
    Select(browser.find_element("id", "trials-status")).select_by_value("RUNNING")
    assert sorted(r[0] for r in _rows(browser)) == ["t17", "t18"]
    Select(browser.find_element("id", "trials-status")).select_by_value("")
    assert len(_rows(browser)) == 19


def test_the_live_page_reloads_itself_keeping_the_filter_until_paused(browser, page, monkeypatch):
    """Last in the module: it leaves the report for a live copy that reloads every second. The copy is drawn
    without plotly (its views take seconds to draw on a loaded 2-core machine, longer than the interval): the
    reload and the table are the page's own script."""
    import time

    from selenium.webdriver.support.ui import WebDriverWait

    from analysis import interactive
    from analysis.report_build import write_experiment_report

    monkeypatch.setattr(interactive, "available", lambda: False)
    live = write_experiment_report(page.parent, out=page.parent / "live.html", refresh_s=1)
    assert "install the report extra" in live.read_text()
    browser.get(live.as_uri())
    box = browser.find_element("id", "trials-filter")
    box.clear()
    box.send_keys("dora 16")
    browser.execute_script("window.beforeReload = true;")
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return window.beforeReload === undefined"))
    assert browser.find_element("id", "trials-filter").get_attribute("value") == "dora 16"  # kept over the reload
    assert len(_rows(browser)) == 4
    browser.find_element("id", "live-pause").click()
    browser.execute_script("window.beforeReload = true;")
    time.sleep(1.8)
    assert browser.execute_script("return window.beforeReload") is True  # paused: no reload any more
