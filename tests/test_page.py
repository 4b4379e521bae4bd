"""The operators' page in headless Chromium (Debian's package, driven by Playwright): it follows a scan live."""

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from services.beamline.sim import GEOMETRY_34IDC, Beamline
from shared.physics import crystals

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_page_follows_a_scan_live(service, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 860})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(service["base"] + "/")
    page.wait_for_selector("#connection.live", timeout=20000)  # the event stream is open
    intensity = crystals.simulated_scan(32, 777, 1, 1, True, (1e8, 1e8))[0]
    scan = f"page-{uuid.uuid4().hex[:6]}"
    beamline = Beamline(service["zmq"])
    beamline.play(scan, np.round(intensity).astype(np.uint32), rate_hz=6, geometry=GEOMETRY_34IDC, end=False)
    # While frames arrive: the page switched to the new scan and its progress grows.
    page.wait_for_function(f"document.getElementById('scan-title').textContent === '{scan}'", timeout=20000)
    page.wait_for_function("/^\\d+ \\/ 32 frames/.test(document.getElementById('progress-text').textContent)"
                           " && parseInt(document.getElementById('progress-text').textContent) > 0")
    # A preview from the partial scan is drawn in 3D before the scan ends.
    page.wait_for_function("parseInt(document.getElementById('plot3d').dataset.framesUsed) > 0", timeout=60000)
    partial = int(page.get_attribute("#plot3d", "data-frames-used"))
    assert 0 < partial < 32
    assert page.locator("#plot3d .main-svg").count() > 0 and page.locator("#amp-0 canvas").count() == 1
    page.screenshot(path=os.environ.get("CDI_LIVE_SCREENSHOT", str(tmp_path / "during-scan.png")))
    beamline.send({"type": "end", "scan": scan})
    beamline.close()
    page.wait_for_function("document.getElementById('plot3d').dataset.framesUsed === '32'", timeout=60000)
    page.wait_for_function("document.getElementById('scan-state').textContent === 'complete'")
    # By default the page shows the best finished stage: the refined one once it exists, without a click.
    page.wait_for_function("document.getElementById('plot3d').dataset.stage === 'refined'", timeout=90000)
    # Phase colours: symmetric about zero over the crystal's own range; the toggle fixes ±π.
    auto_span = float(page.get_attribute("#plot3d", "data-phase-span"))
    assert 0 < auto_span <= 3.142
    page.check("#phase-fixed")
    page.wait_for_function("document.getElementById('plot3d').dataset.phaseSpan === '3.142'")
    page.check("input[name=stage][value=nn]")
    page.wait_for_function("document.getElementById('plot3d').dataset.stage === 'nn'", timeout=30000)
    page.check("input[name=stage][value=refined]")
    page.wait_for_function("document.getElementById('plot3d').dataset.stage === 'refined'", timeout=30000)
    # The downloads follow the scan record, which may arrive just after the refined view: wait for it.
    page.wait_for_function("!document.querySelector('a[data-kind=strain][data-format=npz]').classList"
                           ".contains('disabled')", timeout=20000)
    assert page.get_attribute("a[data-kind=strain][data-format=npz]", "class").split() == ["needs-geometry"]
    # Trust: the refined row's verdict badge, and its uncertainty map on request.
    page.wait_for_function("/converged|uncertain/.test(document.querySelector('#stages tbody').textContent)",
                           timeout=20000)
    page.wait_for_function("/chi_free/.test(document.querySelector('#stages tbody td:nth-child(5) .badge').title)",
                           timeout=20000)  # the badge's tooltip names the cross-validated χ
    # ... and says which part of the verdict's rule decided, the API's own sentence (not the page's guess)
    page.wait_for_function(f"""fetch('/api/scans/{scan}').then((r) => r.json()).then((v) => {{
        const detail = v.results.refined && v.results.refined.verdict_detail;
        return !!detail && document.querySelector('#stages tbody td:nth-child(5) .badge').title.includes(detail); }})""",
                           timeout=20000, polling=500)
    page.check("#show-uncertainty")
    page.wait_for_function("!document.getElementById('uncertainty-row').hidden")
    assert page.locator("#unc-0 canvas").count() == 1
    # The detector view, with the mask overlay (none here: nothing flagged).
    page.click("#detector-box summary")
    page.wait_for_function("/pixels/.test(document.getElementById('detector-note').textContent)", timeout=20000)
    done = Path(os.environ.get("CDI_LIVE_SCREENSHOT_DONE", str(tmp_path / "complete.png")))
    page.screenshot(path=str(done), full_page=True)
    assert done.stat().st_size > 10000
    assert not errors
