"""The clinic page (`melanoma app`): its answers computed directly against a registry version of
a tiny model (the same probabilities as `melanoma predict`, bad uploads answered with predict's
reason codes, the batch table and drift verdict), and the page itself in a headless Chromium."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from bench.process import stop_group
from bench.project import command_env
from bench.serving import HOST, free_port
from melanoma.app.answers import (
    DRIFT_MIN_IMAGES,
    TABLE_COLUMNS,
    TOO_MANY_IMAGES,
    Threshold,
    Upload,
    answer_uploads,
    batch_table,
    drift_verdict,
    load_version,
    table_csv,
    threshold_for,
    verdict,
)
from melanoma.cli import main
from melanoma.data.images import DECOMPRESSION_BOMB, EMPTY_FILE, NOT_AN_IMAGE
from melanoma.exit_codes import CANNOT_RUN
from melanoma.inference.predict import predict_files
from melanoma.labels import LABELS, MELANOMA
from melanoma.registry.promotion import THRESHOLD_TAG, Decision, record_decision
from melanoma.registry.serving import TOO_LARGE, ServingConfig, log_served_model
from melanoma.registry.sites import SiteError, store_site
from melanoma.tracking import configure_tracking
from tests.helpers import (
    build_tiny_classifier,
    drift_reference,
    fitted_detector,
    noise_images,
    site_record,
)

MODEL = "melanoma-test"
SITE = "clinic_a"


def lesion_png(seed: int, size: int = 40) -> bytes:
    """A PNG of uniform noise, like the images the tiny model's detector was fitted on: a
    familiar "lesion" (the tiny mean-colour model scores it by its mean colour)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def chart_png() -> bytes:
    """A bar chart (blue bars on white): not a lesion image; the detector finds it unfamiliar."""
    pixels = np.full((60, 80, 3), 255, np.uint8)
    for left, height in ((5, 50), (30, 30), (55, 45)):
        pixels[60 - height :, left : left + 20] = (30, 60, 200)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def registry(module_mlflow_project, tmp_path_factory) -> dict:
    """melanoma-test v1, champion: the tiny mean-colour classifier logged as `register` logs
    it, with a detector and a drift reference fitted on noise images, headline figures as
    tags, a global threshold that lesion_a alerts at and lesion_b does not, and site clinic_a
    whose threshold is far below both. Returns {file name: bytes} of the two lesions and the
    threshold."""
    tmp_path = tmp_path_factory.mktemp("app")
    model = build_tiny_classifier()
    images = noise_images(80, 16)
    stored = [tmp_path / "unfamiliar.npz", tmp_path / "drift_reference.npz"]
    fitted_detector(model, images, flagged=0.02).save(stored[0])
    drift_reference(model, images).save(stored[1])
    candidates = [tmp_path / f"candidate{seed}.png" for seed in (1, 2)]
    for seed, path in enumerate(candidates, 1):
        path.write_bytes(lesion_png(seed))
    params = module_mlflow_project
    ingest = params.ingest
    scored = predict_files(model, candidates, ingest.image_size, ingest.max_image_pixels)
    # lesion_a: the one of higher P(melanoma), which alone alerts at the global threshold
    ranked = sorted(scored, key=lambda p: -p.melanoma_probability)
    lesions = {
        name: Path(p.path).read_bytes()
        for name, p in zip(("lesion_a.png", "lesion_b.png"), ranked, strict=True)
    }
    melanoma = sorted(p.melanoma_probability for p in scored)
    threshold = float(np.mean(melanoma))
    config = ServingConfig(threshold, ingest.image_size, ingest.max_image_pixels, 8, 200_000)
    # In the project's experiment: the template store's default one keeps its artifacts under
    # the folder the suite started in.
    with mlflow.start_run(experiment_id=configure_tracking(params.mlflow)):
        uri = log_served_model(model, config, candidates[0], stored).model_uri
    figures = {
        "test_melanoma_auc": "0.81",
        "test_accuracy": "0.62",
        "test_balanced_accuracy": "0.55",
        "tinyext_melanoma_auc": "0.7",
    }
    mlflow.register_model(uri, MODEL, tags={THRESHOLD_TAG: str(threshold), **figures})
    client = mlflow.MlflowClient()
    record_decision(client, MODEL, "1", Decision(True, "first"))
    # far below every image's score: at the site, everything alerts
    site_threshold = melanoma[0] / 100
    store_site(client, MODEL, "1", site_record(SITE, site_threshold))
    return {"lesions": lesions, "threshold": threshold, "site_threshold": site_threshold}


@pytest.fixture(scope="module")
def served(registry, module_mlflow_project):
    return load_version(module_mlflow_project)


def test_the_page_serves_the_champion_with_its_threshold_sites_and_card(served, registry):
    assert (served.model_name, served.version) == (MODEL, "1")
    assert served.global_threshold == pytest.approx(registry["threshold"])
    assert list(served.sites) == [SITE]
    assert served.figures == {
        "test": {"melanoma_auc": 0.81, "accuracy": 0.62, "balanced_accuracy": 0.55},
        "tinyext": {"melanoma_auc": 0.7},
    }
    assert served.detector is not None and served.drift_reference is not None
    assert threshold_for(served, SITE) == Threshold(registry["site_threshold"], SITE)
    with pytest.raises(SiteError, match="no site 'clinic_b'; its sites: clinic_a"):
        threshold_for(served, "clinic_b")


def test_uploads_get_the_probabilities_of_melanoma_predict(
    served, registry, module_mlflow_project, tmp_path, capsys
):
    lesions = registry["lesions"]
    for name, data in lesions.items():
        (tmp_path / name).write_bytes(data)
    assert main(["predict", *(str(tmp_path / n) for n in lesions), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["predictions"]

    uploads = [Upload(name, data) for name, data in lesions.items()]
    answers = answer_uploads(served, uploads, module_mlflow_project)
    for answer, want in zip(answers, expected, strict=True):
        got = answer.prediction
        np.testing.assert_allclose(
            [got.probabilities[label] for label in LABELS],
            [want["probabilities"][label] for label in LABELS],
            atol=1e-6,
        )
        assert got.unfamiliar is want["unfamiliar"] is False
        assert set(answer.overlays) == {MELANOMA, got.top_label}
        for image in (answer.pixels, *answer.overlays.values()):
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8

    global_threshold = Threshold(registry["threshold"])
    first, second = (answer.prediction for answer in answers)
    assert verdict(first, global_threshold).startswith("MELANOMA ALERT: P(melanoma) ")
    assert "the threshold of the model (global)" in verdict(first, global_threshold)
    assert verdict(second, global_threshold).startswith("No melanoma alert")
    at_site = verdict(second, threshold_for(served, SITE))
    assert at_site.startswith("MELANOMA ALERT") and "the threshold of site clinic_a" in at_site

    (chart,) = answer_uploads(served, [Upload("chart.png", chart_png())], module_mlflow_project)
    assert chart.prediction.unfamiliar is True
    assert verdict(chart.prediction, global_threshold).startswith(
        "UNFAMILIAR image, answer not to be trusted. "
    )


def test_app_refuses_an_unknown_site_or_version_before_starting_a_server(registry, caplog):
    assert main(["app", "--site", "clinic_b"]) == CANNOT_RUN
    assert "melanoma-test v1 has no site 'clinic_b'; its sites: clinic_a" in caplog.text
    assert main(["app", "--version", "9"]) == CANNOT_RUN
    assert "melanoma-test has no version 9" in caplog.text


def test_the_benchmark_times_the_pages_answers(served, module_mlflow_project):
    from bench.app import BATCH, measure, report

    figures = measure(served, module_mlflow_project, repeats=2)
    for label in ("without Grad-CAM", "with Grad-CAM"):
        assert 0 < figures[f"one image {label}: p50 ms"] <= figures[f"one image {label}: p95 ms"]
        assert figures[f"{BATCH} images {label}: s"] > 0
    lines = report(served, figures).splitlines()
    assert lines[0] == "the page's answers, melanoma-test v1:"
    assert any(line.endswith("(target <= 600)") and "with Grad-CAM: p50" in line for line in lines)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.jpg", b"\xff\xd8\xff")
    return buffer.getvalue()


def _big_png(pixels: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (pixels // 1000 + 1, 1000)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_uploads_are_answered_with_their_reason_and_the_rest_scored(
    served, registry, module_mlflow_project
):
    params = module_mlflow_project
    params = params.model_copy(
        update={
            "ingest": params.ingest.model_copy(update={"max_image_pixels": 1_000_000}),
            "serve": params.serve.model_copy(
                update={"max_images_per_request": 7, "max_image_bytes": 50_000}
            ),
        }
    )
    lesion = registry["lesions"]["lesion_a.png"]
    uploads = [
        Upload("notes.jpg", b"these are my notes, not a photo"),
        Upload("empty.jpg", b""),
        Upload("huge.png", _big_png(1_000_000)),
        Upload("photos.zip", _zip()),
        Upload("report.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"),
        Upload("lesion.png", lesion),
        Upload("heavy.png", lesion + b"\0" * 50_000),
        Upload("eighth.png", lesion),
    ]
    answers = answer_uploads(served, uploads, params)
    reasons = [answer.prediction.reason for answer in answers]
    assert reasons == [
        NOT_AN_IMAGE,
        EMPTY_FILE,
        DECOMPRESSION_BOMB,
        NOT_AN_IMAGE,
        NOT_AN_IMAGE,
        None,
        TOO_LARGE,
        TOO_MANY_IMAGES,
    ]
    assert "(serve.max_images_per_request)" in answers[-1].prediction.error
    assert answers[5].prediction.ok and answers[5].overlays

    table = batch_table(answers, Threshold(registry["threshold"]))
    assert tuple(table.columns) == TABLE_COLUMNS and len(table) == len(uploads)
    assert table["not scored: reason"][1].startswith("empty_file: the file is empty")
    assert table["alert"].tolist()[5] is True
    csv = table_csv(table).decode().splitlines()
    assert csv[0] == ",".join(TABLE_COLUMNS) and csv[6].startswith("lesion.png,")


def test_a_batch_of_30_gets_the_drift_verdict_and_a_smaller_one_none(served, module_mlflow_project):
    params = module_mlflow_project
    batch = []
    for n in range(DRIFT_MIN_IMAGES + 6):  # the detector flags a few: they are left out
        buffer = io.BytesIO()
        pixels = np.random.default_rng(100 + n).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, "PNG")
        batch.append(Upload(f"image{n}.png", buffer.getvalue()))
    answers = answer_uploads(served, batch, params, explain=False)
    assert all(not answer.overlays for answer in answers)
    familiar = sum(not a.prediction.unfamiliar for a in answers)
    assert familiar >= DRIFT_MIN_IMAGES
    line = drift_verdict(served, answers, params)
    assert line.startswith(f"{familiar} images look like the validation split of melanoma-test v1")
    assert drift_verdict(served, answers[:5], params) is None


# --- the page in a real browser ------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,2400",
)
PAGE_TIMEOUT = 180  # seconds: the server imports TensorFlow and loads the model first


@contextmanager
def page_server(log_file: Path, *options: str) -> Iterator[str]:
    """`melanoma app` on a free loopback port, in the current project; its URL once Streamlit
    says it is healthy. Stopped (its process group) on exit."""
    port = free_port()
    command = [sys.executable, "-m", "melanoma.cli", "app", "--port", str(port), *options]
    env = command_env(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    with open(log_file, "w") as output:
        server = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + PAGE_TIMEOUT
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the page did not come up:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(server)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def chromium() -> Iterator:
    """Debian's Chromium, headless, driven through Debian's chromium-driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def image_answers(browser) -> dict[str, str]:
    """{file name: the text of its answer's box} of the page as shown."""
    from selenium.webdriver.common.by import By

    # Each box is a container keyed answer_<n>: Streamlit gives it the class st-key-answer_<n>.
    boxes = browser.find_elements(By.CSS_SELECTOR, '[class*="st-key-answer_"]')
    texts = [box.text for box in boxes if box.text]
    return {text.splitlines()[0]: text for text in texts}


def choose_site(browser, wait, site: str) -> None:
    """Pick `site` in the page's site selectbox (a list that opens on a click)."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, '[data-testid="stSelectbox"] [role="combobox"]').click()
    option = wait.until(
        lambda b: next(
            (o for o in b.find_elements(By.CSS_SELECTOR, '[role="option"]') if o.text == site),
            None,
        )
    )
    option.click()


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no Chromium: the browser test needs Debian's chromium and chromium-driver "
    "(apt-get install chromium chromium-driver; .ci/run installs them as root)",
)
def test_a_browser_uploads_images_chooses_a_site_and_reads_the_answers(registry, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    uploads = [*registry["lesions"].items(), ("chart.png", chart_png())]
    uploads.append(("notes.jpg", b"not a photo"))
    files = []
    for name, data in uploads:
        files.append(tmp_path / name)
        files[-1].write_bytes(data)
    downloads = tmp_path / "downloads"
    project = sorted(Path.cwd().rglob("*"))
    with page_server(tmp_path / "page.log") as url, chromium() as browser:
        browser.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        browser.get(url)
        wait = WebDriverWait(browser, 120)
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "input[type=file]"))
        upload.send_keys("\n".join(str(f) for f in files))
        wait.until(lambda b: len(image_answers(b)) == len(files))
        page = browser.find_element(By.TAG_NAME, "body").text
        at_global = image_answers(browser)

        choose_site(browser, wait, SITE)
        wait.until(lambda b: "the threshold of site clinic_a" in image_answers(b)["lesion_b.png"])
        at_site = image_answers(browser)
        browser.find_element(By.XPATH, "//button[contains(., 'Download CSV')]").click()
        csv = wait.until(lambda _: next(downloads.glob("*.csv"), None))
        screenshot = os.environ.get("MELANOMA_APP_SCREENSHOT")  # docs/app.png is one
        browser.save_screenshot(screenshot or str(tmp_path / "page.png"))

    assert sorted(Path.cwd().rglob("*")) == project  # the uploads stayed in memory
    assert "Decision support, not a diagnosis." in page and "4 images" in page
    assert "MELANOMA ALERT: P(melanoma)" in at_global["lesion_a.png"]
    assert "the threshold of the model (global)" in at_global["lesion_a.png"]
    assert "No melanoma alert" in at_global["lesion_b.png"]
    assert "UNFAMILIAR: this image is unlike the lesion images" in at_global["chart.png"]
    assert "Not scored (not_an_image)" in at_global["notes.jpg"]
    for name in ("lesion_a.png", "lesion_b.png"):
        assert "MELANOMA ALERT: P(melanoma)" in at_site[name]
    lines = csv.read_text().splitlines()
    assert lines[0] == ",".join(TABLE_COLUMNS) and len(lines) == 1 + len(files)
    assert lines[2].startswith("lesion_b.png,") and ",True," in lines[2]  # at the site
    assert lines[4].startswith("notes.jpg,") and "not_an_image" in lines[4]
