"""Every notebook in a real JupyterLab, driven through headless Chromium: open it, Run > Run All Cells, wait for
every cell, and fail on an error output or a cell that does not finish. Notebooks run on the toy parameters of
tests/conftest.py (injected as papermill does, into a copy) with make run's models ($TOY_RUN_DIR)."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from chromium_driver import chromium, images_dir, outside_requests, report
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from test_chat_page import free_port

from conftest import NOTEBOOKS, TOY_PARAMETERS, script_env, stop_server

pytestmark = pytest.mark.slow
CELL_TIMEOUT = 600  # seconds one cell may run, as nbval's --nbval-cell-timeout in the Makefile
# The prompts ("[3]:", "[*]:", "[ ]:") of the code cells of the notebook on screen
PROMPTS = "return Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell " \
          ".jp-InputPrompt')).map(p => p.textContent.trim());"
# JupyterLab settings for the test: every cell in the DOM (no windowing), saved only when the test says so,
# no news or update checks.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def toy_copy(ipynb: Path, folder: Path) -> Path:
    """`ipynb` without its outputs and with its toy parameters injected after the parameters cell (papermill's
    own loading and `parameterize_notebook`), written into `folder`."""
    nb = load_notebook_node(str(ipynb))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb = parameterize_notebook(nb, TOY_PARAMETERS[ipynb.stem])
    path = folder / ipynb.name
    nbformat.write(nb, path)
    return path


@contextlib.contextmanager
def jupyterlab(root: Path, toy_run: Path, images: Path) -> Iterator[str]:
    """JupyterLab on 127.0.0.1 serving `root`, with a token, test settings and make run's models; yields its URL."""
    settings = root.parent / "lab-settings"
    for name, values in SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")
    port, token = free_port(), secrets.token_hex(16)
    env = script_env(TOY_RUN_DIR=str(toy_run), COURSE_IMAGES_DIR=str(images),
                     COURSE_OUTPUT_DIR=str(root.parent / "output"), JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root.parent / "workspaces"),
                     JUPYTER_CONFIG_DIR=str(root.parent / "jupyter-config"),
                     JUPYTER_RUNTIME_DIR=str(root.parent / "jupyter-runtime"))
    env.pop("OMP_NUM_THREADS")  # the kernel uses the cores as a reader's would
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.allow_root=True",  # CI runs as root
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not any(f"127.0.0.1:{port}/lab" in line for line in lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("JupyterLab did not start:\n" + "".join(lines[-40:]))
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token
    finally:
        stop_server(proc, 30)


def shut_down_kernels(url: str, token: str) -> None:
    """End every kernel of the server (JupyterLab's REST API), so the next notebook has the cores to itself."""
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels", headers=headers)) as response:
        kernels = json.load(response)
    for kernel in kernels:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels/{kernel['id']}", headers=headers,
                                                      method="DELETE")).close()


@pytest.fixture(scope="module")
def lab(toy_run, tmp_path_factory):
    """One JupyterLab and one Chromium for all notebooks: (driver, lab URL, token, notebook folder)."""
    root = tmp_path_factory.mktemp("lab") / "notebooks"
    root.mkdir()
    for ipynb in NOTEBOOKS:
        toy_copy(ipynb, root)
    with jupyterlab(root, toy_run, root.parent / "images") as (url, token), chromium(1400, 1000) as driver:
        yield driver, url, token, root


def idle_kernel_taking_the_offered_one(driver) -> bool:
    """True once the notebook's kernel is idle. When JupyterLab opens a notebook before its kernel list has loaded it
    asks which kernel to start ("Select Kernel", Python 3 preselected): press Select, as a person would."""
    try:
        for dialog in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog"):
            if "Select Kernel" in dialog.find_element(By.CSS_SELECTOR, ".jp-Dialog-header").text:
                dialog.find_element(By.CSS_SELECTOR, ".jp-Dialog-button.jp-mod-accept").click()
                return False
    except (NoSuchElementException, StaleElementReferenceException):  # the dialog closed while being read
        return False
    # the status bar names the kernel and its state ("Python 3 (ipykernel) | Idle"; "No Kernel | Initializing" before)
    status = driver.execute_script(
        "return Array.from(document.querySelectorAll('.jp-StatusBar-TextItem')).map(e => e.textContent.trim());")
    return any(text.endswith("| Idle") and not text.startswith("No Kernel") for text in status)


def run_all_cells(driver, name: str) -> tuple[list[str], float]:
    """Open the notebook, wait for an idle kernel, Run > Run All Cells, and wait until no cell is queued or
    running. Fails when one cell runs longer than CELL_TIMEOUT. Returns the final prompts and the seconds taken."""
    wait = WebDriverWait(driver, 180)
    wait.until(lambda d: d.execute_script(PROMPTS))
    wait.until(idle_kernel_taking_the_offered_one)
    driver.find_element(By.XPATH, "//li[contains(@class, 'lm-MenuBar-item')][.//*[text()='Run']]").click()
    wait.until(expected_conditions.element_to_be_clickable(
        (By.CSS_SELECTOR, "li[data-command='runmenu:run-all']"))).click()
    start = time.monotonic()
    running, since = None, start
    while True:
        time.sleep(1)
        prompts = driver.execute_script(PROMPTS)
        busy = [i for i, p in enumerate(prompts) if p == "[*]:"]
        if not busy and prompts[0] != "[ ]:":  # started, and nothing queued or running any more
            break
        if not busy and time.monotonic() - start > 120:
            pytest.fail(f"{name}: Run All Cells did not start any cell in 120 s (prompts {prompts})")
        if not busy:  # not started yet
            continue
        if busy[0] != running:
            running, since = busy[0], time.monotonic()
        elif time.monotonic() - since > CELL_TIMEOUT:
            pytest.fail(f"{name}: code cell {running + 1} did not finish in {CELL_TIMEOUT} s")
    return prompts, time.monotonic() - start


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_jupyterlab(lab, ipynb, request):
    driver, url, token, root = lab
    path = root / ipynb.name
    driver.get(f"{url}/lab/tree/{ipynb.name}?reset&token={token}")  # reset: the earlier notebooks' tabs are closed
    try:
        prompts, seconds = run_all_cells(driver, ipynb.name)
        # the file JupyterLab saves (Ctrl+S; autosave is off): no error output anywhere
        before = path.stat().st_mtime
        ActionChains(driver).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
        WebDriverWait(driver, 60).until(lambda d: path.stat().st_mtime > before)
    except BaseException:  # what the page showed, for whoever reads the failure
        driver.save_screenshot(str(images_dir() / f"jupyterlab_failed_{ipynb.stem}.png"))
        raise
    finally:
        shut_down_kernels(url, token)
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [(i + 1, o.get("ename"), o.get("evalue")) for i, c in enumerate(code) for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{ipynb.name}: error outputs (code cell, exception, message): {errors}"
    # the page: every code cell ran, in order (Run All stops at an error: the cells after it stay unrun)
    numbers = [int(m.group(1)) if (m := re.fullmatch(r"\[(\d+)\]:", p)) else None for p in prompts]
    unrun = [i + 1 for i, n in enumerate(numbers) if n is None]
    assert not unrun, f"{ipynb.name}: code cells {unrun} did not run (prompts {prompts})"
    assert numbers == sorted(numbers) and len(code) == len(prompts)
    assert [c.execution_count for c in code] == numbers  # the saved file is what the page showed
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert outside_requests(driver) == [], "JupyterLab's page loaded something from outside this machine"
    report(request, f"JupyterLab {ipynb.name}: {len(code)} code cells ran without an error in {seconds:.0f} s "
                    f"(toy parameters {TOY_PARAMETERS[ipynb.stem]})")
