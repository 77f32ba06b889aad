"""What a user sees in optuna-dashboard after `tuner fit`: headless Chromium on the real server.

Needs Debian's Chromium (`.ci/system-packages` installs it); playwright's Python package drives it and
never downloads a browser. Screenshots go to test-artifacts/ for a person to look at.
"""
import math
import os
import shutil
from pathlib import Path

import pytest
from dashboard_server import REPO, first_sentence, load_study

pytest_plugins = ["dashboard_server"]  # fixtures: fitted_storage, dashboard

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the networking flags Chromium's background connections hang on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"
RENDER_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run .ci/system-packages (as root; it installs Debian's "
                    "chromium), or set CHROMIUM to a Chromium binary", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: pip install playwright "
                    "(never `playwright install`: the tests use the system Chromium)", pytrace=False)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(RENDER_TIMEOUT_MS)
    yield page
    context.close()


def screenshot(target, name: str, **options) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    target.screenshot(path=str(path), **options)
    print(f"screenshot: {path}")
    return path


@pytest.fixture
def fit(fitted_storage) -> dict:
    return load_study(fitted_storage).user_attrs["lr_batch_fit"]


def open_figure(page, dashboard, fit):
    """The study's main page, waited on until plotly has drawn the fit's figure; returns its locator."""
    page.goto(f"{dashboard.url}/dashboard/studies/{dashboard.study_id()}")
    figure = page.locator(".js-plotly-plot", has_text=f"Optimal learning rate vs batch size: {fit['study']}")
    figure.locator(".scatterlayer .trace").first.wait_for()
    return figure


def test_the_study_page_shows_the_lr_batch_figure(page, dashboard, fit):
    figure = open_figure(page, dashboard, fit)
    text = figure.text_content()
    assert "batch size" in text and "learning rate" in text  # axis titles
    assert f"{fit['recommended']} (recommended)" in text  # the recommended rule's legend entry
    measured = [o for o in fit["optimal_lr"] if o["lr"] is not None]
    verified = [b for b in fit["verify"]["batches"] if b["best_lr"] is not None]
    own = [o for o in measured if o.get("own_lr") is not None]
    # one marker per optimum, one per optimum's own where it was averaged with the rule, and one per
    # held-out batch size `tuner verify` measured
    assert own and figure.locator(".scatterlayer .trace .points path").count() == (
        len(measured) + len(own) + len(verified))
    assert "best measured at a held-out batch size (tuner verify)" in text and "its trials alone" in text
    screenshot(page, "dashboard-study.png", full_page=True)
    figure.scroll_into_view_if_needed()
    screenshot(figure, "dashboard-figure.png")


def test_the_study_page_shows_steps_against_samples_to_the_target(page, dashboard, fit):
    page.goto(f"{dashboard.url}/dashboard/studies/{dashboard.study_id()}")
    figure = page.locator(".js-plotly-plot", has_text="Steps vs samples to reach")
    figure.locator(".scatterlayer .trace").first.wait_for()
    text = figure.text_content()
    assert "optimizer steps to the target" in text and "training samples to the target" in text  # axis titles
    reached = [r for r in fit["critical"]["batches"] if r["reached"]]
    assert all(f"B={r['batch_size']}" in text for r in reached)  # each batch size's point is labelled
    assert f"B_crit≈{fit['critical']['b_crit']:.3g}" in text
    # one marker per batch size that reached the target, and one for the critical batch size
    assert figure.locator(".scatterlayer .trace .points path").count() == len(reached) + 1
    figure.scroll_into_view_if_needed()
    screenshot(figure, "dashboard-critical-figure.png")


def test_the_figure_axes_frame_the_measured_batch_sizes(page, dashboard, fit):
    figure = open_figure(page, dashboard, fit)
    low, high = figure.evaluate("el => el._fullLayout.xaxis.range")  # log10 units on a log axis
    sizes = fit["batch_sizes"] + [b["batch_size"] for b in fit["verify"]["batches"]]
    assert math.log10(min(sizes)) - 1 < low < math.log10(min(sizes)) < math.log10(max(sizes)) < high \
        < math.log10(max(sizes)) + 1, (low, high)


def open_note(page, dashboard, fit):
    page.set_viewport_size({"width": 1400, "height": 1800})  # the note scrolls inside the page: show it all
    page.goto(f"{dashboard.url}/dashboard/studies/{dashboard.study_id()}/note")
    page.get_by_text(first_sentence(fit["verdict"]), exact=False).first.wait_for()


def test_the_note_page_shows_the_verdict(page, dashboard, fit):
    open_note(page, dashboard, fit)
    assert page.get_by_role("heading", name="Optimal learning rate per batch size").count() == 1
    assert page.locator("table").count() >= 3  # optima, rules, cost of each rule
    screenshot(page, "dashboard-note.png", full_page=True)


def test_the_note_shows_what_verify_measured(page, dashboard, fit):
    open_note(page, dashboard, fit)
    assert page.get_by_text(fit["verify"]["summary"], exact=False).count() >= 1  # the verdict's last sentence
    section = page.get_by_role("heading", name="Verified at held-out batch sizes")
    assert section.count() == 1
    table = page.locator("table").filter(has_text="regret").last
    rows = sum(len(b["rates"]) for b in fit["verify"]["batches"])
    assert table.locator("tbody tr").count() == rows
    section.scroll_into_view_if_needed()
    screenshot(page, "dashboard-note-verify.png", full_page=True)


def test_the_note_shows_no_raw_html(page, dashboard, fit):
    open_note(page, dashboard, fit)
    assert "<sub>" not in page.inner_text("body")
