"""The paint page in a real browser: Debian's chromium, driven by Selenium, against the served model.

    .venv/bin/python -m pytest tests/test_paint_page.py -q      # `make browser` installs chromium

The page starts from one of the store's validation maps; a stroke of one class is painted
with the mouse; the K images that come back change most where the stroke is (the cascade is
global, so some change elsewhere is expected: the mean change inside the stroke's pixels is
compared with the mean change outside). Undo brings back the map and exactly the images it
had; fill floods a region; the map downloads as the PNG it shows. A screenshot is kept under
`work/test-artifacts/paint-page/` (or `$CRN_TEST_ARTIFACTS`), whose path the test prints.
"""
from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from serve_fixtures import PATIENCE_S, served_model

from pipeline.data.schema import load_schema
from pipeline.data.store import decode_labels, label_column, open_store

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without these the browser waits on the network, which this machine does not have.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")
REPO = Path(__file__).resolve().parent.parent
SCHEMA = load_schema("cityscapes")


@pytest.fixture(scope="module")
def service(toy_store, ray_session, tmp_path_factory):
    with served_model(toy_store, tmp_path_factory.mktemp("paint"), "crn-paint-test") as served:
        yield served


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(PATIENCE_S)
    try:
        yield driver
    finally:
        driver.quit()


def answers(driver) -> int:
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-answers"))


def wait_for_answer(driver, after: int) -> None:
    """Until the page has shown the images of an edit made after `after` answers."""
    WebDriverWait(driver, PATIENCE_S).until(lambda d: answers(d) > after and not d.execute_script(
        "return state.inFlight || state.dirty"))
    status = driver.find_element(By.ID, "status")
    assert "error" not in status.get_attribute("class"), status.text


def shown_images(driver) -> np.ndarray:
    """The K images on the page, from their data: URLs: uint8 [K, H, W, 3]."""
    sources = [img.get_attribute("src") for img in driver.find_elements(By.CSS_SELECTOR, "#variants img")]
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
                     for src in sources]).astype(np.int16)


def shown_labels(driver) -> np.ndarray:
    height, width = driver.execute_script("return [state.height, state.width]")
    return np.asarray(driver.execute_script("return Array.from(state.labels)"), dtype=np.uint8).reshape(height, width)


def edit(driver, action) -> None:
    before = answers(driver)
    action()
    wait_for_answer(driver, before)


def stroke(driver, canvas, cells: list[tuple[int, int]], height: int, width: int) -> None:
    """Press at the first cell, drag through the others, release: map cells (row, column) to the
    canvas's on-screen pixels, as offsets from its centre (Selenium 4's origin)."""
    scale_y, scale_x = canvas.size["height"] / height, canvas.size["width"] / width

    def offset(cell):
        row, column = cell
        return (int((column + 0.5) * scale_x - canvas.size["width"] / 2),
                int((row + 0.5) * scale_y - canvas.size["height"] / 2))

    chain = ActionChains(driver).move_to_element_with_offset(canvas, *offset(cells[0])).click_and_hold()
    for previous, cell in zip(cells, cells[1:]):
        (x0, y0), (x1, y1) = offset(previous), offset(cell)
        chain = chain.move_by_offset(x1 - x0, y1 - y0)
    chain.release().perform()


def artifacts_folder() -> Path:
    folder = Path(os.environ.get("CRN_TEST_ARTIFACTS", REPO / "work" / "test-artifacts")) / "paint-page"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_stroke_changes_the_images_most_where_it_is(service, toy_store, browser, tmp_path, capsys):
    driver = browser
    driver.get(f"{service.url}/")
    wait_for_answer(driver, 0)  # the blank map's images
    assert driver.find_element(By.ID, "model").text.startswith(f"models:/{service.name}/1 (version 1)")
    names = [label.text for label in driver.find_elements(By.CSS_SELECTOR, "#classes label")]
    assert names == SCHEMA.class_names
    assert len(driver.find_elements(By.CSS_SELECTOR, "#variants img")) == 2

    # Start from a validation map of the store: the page shows exactly the stored classes.
    sample = open_store(toy_store).sample_ids("val")[1]
    edit(driver, lambda: Select(driver.find_element(By.ID, "start")).select_by_value(sample))
    stored = decode_labels(open_store(toy_store).read_table("val", "32x64").column(label_column("32x64")), "32x64")[1]
    np.testing.assert_array_equal(shown_labels(driver), stored)
    before_labels, before_images = shown_labels(driver), shown_images(driver)
    height, width = before_labels.shape

    # A stroke of the class the map has least of, across the left part of the map.
    klass = int(np.argmin(np.bincount(before_labels.ravel(), minlength=SCHEMA.num_classes)[:SCHEMA.void_index]))
    driver.find_element(By.CSS_SELECTOR, f"#classes label[data-index='{klass}']").click()
    canvas = driver.find_element(By.ID, "map")
    edit(driver, lambda: stroke(driver, canvas, [(height // 2, column) for column in range(4, width // 3, 2)],
                                height, width))
    after_labels, after_images = shown_labels(driver), shown_images(driver)
    region = after_labels != before_labels
    assert region.any() and (after_labels[region] == klass).all()
    assert region[:, width // 2:].sum() == 0  # the stroke stayed where it was drawn

    change = np.abs(after_images - before_images).mean(axis=-1)  # [K, H, W]
    inside, outside = change[:, region].mean(), change[:, ~region].mean()
    screenshot = artifacts_folder() / "paint-page.png"
    driver.save_screenshot(str(screenshot))
    with capsys.disabled():
        print(f"\npaint page: mean change {inside:.1f} inside the stroke ({region.sum()} pixels), "
              f"{outside:.1f} outside; screenshot {screenshot}")
    assert inside > 2 * outside and inside > 5

    # Undo: the map before the stroke, and exactly its images (the service is deterministic).
    edit(driver, lambda: driver.find_element(By.ID, "undo").click())
    np.testing.assert_array_equal(shown_labels(driver), before_labels)
    np.testing.assert_array_equal(shown_images(driver), before_images)

    # Fill: the region under the click becomes the class.
    driver.find_element(By.CSS_SELECTOR, "#tool input[value='fill']").click()
    row, column = height - 2, width - 2
    target = before_labels[row, column]
    edit(driver, lambda: stroke(driver, canvas, [(row, column)], height, width))
    filled = shown_labels(driver)
    untouched = before_labels != target
    assert filled[row, column] == klass and (filled[untouched] == before_labels[untouched]).all()

    # Download the map: the PNG the page sends, in the schema's colours.
    driver.find_element(By.ID, "download-map").click()
    downloaded = tmp_path / "downloads" / "label-map.png"
    deadline = time.monotonic() + PATIENCE_S
    while not downloaded.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    palette = np.asarray([cls.colors[0] for cls in SCHEMA.all_classes], dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(downloaded).convert("RGB")), palette[filled])
