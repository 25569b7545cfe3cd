"""Run every notebook as a reader does: in JupyterLab, in a real (headless) browser, through the menus.

    python scripts/check_notebooks_in_browser.py                        # every notebooks/*.ipynb, ci profile
    python scripts/check_notebooks_in_browser.py notebooks/04_*.ipynb --screenshots shots/

nbval (the test command) executes the notebooks in a kernel; this script also checks what only a browser shows.
It copies notebooks/ and results/ to a temporary folder, starts JupyterLab there on 127.0.0.1 with a random token and
``SPO_LAB_PROFILE=ci`` in its environment, and for each notebook, one at a time: opens it from the file browser,
clicks Run > Run All Cells, waits until no cell is queued or running and the kernel is idle, saves it, then reports

- time: from the click to the idle kernel, in seconds;
- cells run out of the notebook's code cells, and error outputs (name and message of the first);
- figures: images in the outputs that the browser decoded; tables: HTML tables (DataFrames) in the outputs;
- math: formulas MathJax typeset, and MathJax errors (``mjx-merror``: TeX it could not parse);

with screenshots in ``--screenshots`` (the first screen, then per notebook its top, its first figure and its
first error). It prints a summary table and exits 1 if any notebook had an error output, left cells unrun, timed
out or had a MathJax error. It is not part of the test command (it takes minutes and needs a browser).

What it needs, and installs none of it (it checks at start and says what is missing):

- Chromium: Debian's ``chromium`` package (``apt-get install chromium``), or ``--browser PATH``;
- Playwright for Python, from the package index (``pip install playwright``); it drives the system Chromium
  through ``executable_path``, so ``playwright install`` (a browser download) is not needed;
- JupyterLab and the kernel: ``pip install -e ".[notebooks]"``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = {"width": 1400, "height": 900}

# JupyterLab user settings for the check: every cell in the page (windowing "none", so every output can be
# counted), no news or update prompts over the notebook.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


# ====================================================================== what it needs
def find_browser(path: str | None) -> str | None:
    if path:
        return path if Path(path).is_file() else None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def check_needs(browser: str | None, wanted: str | None) -> list[str]:
    """What is missing, each with how to get it; empty when all is there."""
    missing = []
    if browser is None:
        missing.append(f"a Chromium browser ({wanted} not found)" if wanted else
                       "a Chromium browser: Debian's chromium package, `sudo apt-get install chromium` "
                       "(or pass --browser PATH)")
    if importlib.util.find_spec("playwright") is None:
        missing.append(f"Playwright for Python, from the package index: `{sys.executable} -m pip install playwright` "
                       "(the system Chromium is used; no `playwright install` needed)")
    if importlib.util.find_spec("jupyterlab") is None or importlib.util.find_spec("ipykernel") is None:
        missing.append(f"JupyterLab and its kernel: `{sys.executable} -m pip install -e \".[notebooks]\"` "
                       "in the repository")
    return missing


# ====================================================================== JupyterLab in a working copy
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def working_copy(paths: list[Path], into: Path) -> Path:
    """``into``/notebooks with the chosen notebooks, and ``into``/results (notebooks 6, 7 and 10 read ../results)."""
    (into / "notebooks").mkdir(parents=True)
    for path in paths:
        shutil.copy2(path, into / "notebooks" / path.name)
    if (ROOT / "results").is_dir():
        shutil.copytree(ROOT / "results", into / "results")
    for rel, value in SETTINGS.items():
        target = into / ".jupyterlab" / "settings" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value))
    return into / "notebooks"


def start_jupyterlab(root: Path, port: int, token: str, profile: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "SPO_LAB_PROFILE": profile,
           "JUPYTERLAB_SETTINGS_DIR": str(root.parent / ".jupyterlab" / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root.parent / ".jupyterlab" / "workspaces")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers often run as root; Jupyter refuses without this
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}; its log: {log}")
        try:
            api(port, token, "status")
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"JupyterLab did not answer on port {port} within 120 s; its log: {log}")


def api(port: int, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}", method=method,
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def shut_down_kernels(port: int, token: str) -> None:
    for session in api(port, token, "sessions"):
        api(port, token, f"sessions/{session['id']}", method="DELETE")


# ====================================================================== one notebook in the browser
# Read from the page while and after the notebook runs. A queued or running cell shows the prompt "[*]:".
PAGE_STATE = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const imgs = [...panel.querySelectorAll('.jp-OutputArea-output img')];
  return {
    busy: prompts.filter(p => p.includes('*')).length,
    run: prompts.filter(p => /\\[\\d+\\]/.test(p)).length,
    kernel: indicator ? indicator.getAttribute('data-status') : null,
    figures: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    broken_figures: imgs.filter(i => i.complete && i.naturalWidth === 0).length,
    tables: panel.querySelectorAll('.jp-OutputArea-output table').length,
    math: panel.querySelectorAll('mjx-container').length,
    math_errors: panel.querySelectorAll('mjx-merror, .MathJax_Error').length,
    math_error_text: [...panel.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error')
                                                                        || e.textContent).slice(0, 3),
  };
}"""


def wait_for(page, predicate, timeout: float, poll: float = 0.5, settle: int = 1):
    """Poll ``PAGE_STATE`` until ``predicate(state)`` holds ``settle`` times in a row; return the state (or None)."""
    deadline, streak, state = time.monotonic() + timeout, 0, None
    while time.monotonic() < deadline:
        state = page.evaluate(PAGE_STATE)
        streak = streak + 1 if state and predicate(state) else 0
        if streak >= settle:
            return state
        time.sleep(poll)
    return None


def open_from_file_browser(page, name: str) -> None:
    item = page.locator(".jp-DirListing-item").filter(
        has=page.locator(".jp-DirListing-itemText", has_text=re.compile(rf"^{re.escape(name)}$")))
    item.first.dblclick()
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook", timeout=60_000)


def run_all_from_menu(page, tries: int = 3) -> bool:
    """Click Run > Run All Cells until a cell is queued or the kernel is busy; False if that never happened."""
    for _ in range(tries):
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        item = page.locator(".lm-Menu-item:not(.lm-mod-disabled)").filter(
            has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")))
        item.first.click(timeout=30_000)
        if wait_for(page, lambda s: s["busy"] > 0 or s["kernel"] == "busy" or s["run"] > 0, timeout=20, poll=0.1):
            return True
        page.keyboard.press("Escape")
    return False


def saved_outputs(path: Path) -> dict:
    """Code cells, cells run and error outputs of the notebook as JupyterLab saved it."""
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    return {"code_cells": len(cells), "cells_run": sum(c.get("execution_count") is not None for c in cells),
            "errors": len(errors), "first_error": f"{errors[0]['ename']}: {errors[0]['evalue']}"[:160] if errors else ""}


def shoot(page, locator, path: Path) -> str:
    """Scroll ``locator`` into view and screenshot the page; the file name, or '' if there is nothing to show."""
    if locator.count() == 0:
        return ""
    locator.first.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))
    return path.name


def check_notebook(browser, url: str, work: Path, name: str, shots: Path, timeout: float) -> dict:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    console_errors = []
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".jp-DirListing-item", timeout=120_000)
    stem = Path(name).stem
    result = {"notebook": name, "time_s": None, "timed_out": False, "screenshots": []}
    try:
        open_from_file_browser(page, name)
        if not wait_for(page, lambda s: s["kernel"] == "idle", timeout=120, settle=2):
            raise RuntimeError("the kernel did not start within 120 s")
        before = (work / name).stat().st_mtime_ns
        t0 = time.monotonic()
        if not run_all_from_menu(page):
            raise RuntimeError("Run > Run All Cells started no cell")
        done = wait_for(page, lambda s: s["busy"] == 0 and s["kernel"] == "idle", timeout=timeout, settle=3)
        result["time_s"] = time.monotonic() - t0
        result["timed_out"] = done is None
        page.wait_for_timeout(1000)  # last outputs and MathJax typesetting
        page.keyboard.press("Control+s")
        deadline = time.monotonic() + 30
        while (work / name).stat().st_mtime_ns == before and time.monotonic() < deadline:
            time.sleep(0.2)
        state = page.evaluate(PAGE_STATE)
        result.update({k: state[k] for k in ("figures", "broken_figures", "tables", "math", "math_errors",
                                             "math_error_text")})
        result.update(saved_outputs(work / name))
        panel = ".jp-NotebookPanel:not(.lm-mod-hidden) "
        result["screenshots"] = [s for s in (
            shoot(page, page.locator(panel + ".jp-Cell"), shots / f"{stem}_top.png"),
            shoot(page, page.locator(panel + ".jp-OutputArea-output img"), shots / f"{stem}_figure.png"),
            shoot(page, page.locator(panel + ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                                             ":has(pre:has-text('Traceback')), " + panel + "mjx-merror"),
                  shots / f"{stem}_error.png") if result["errors"] or result["math_errors"] else "",
        ) if s]
    except Exception as e:  # a notebook that cannot be opened or run is reported, and the others still run
        result.update({"errors": result.get("errors", 0) or 1, "first_error": f"check failed: {e}"[:160]})
        page.screenshot(path=str(shots / f"{stem}_failure.png"))
        result["screenshots"].append(f"{stem}_failure.png")
    result["page_errors"] = len(console_errors)
    context.close()
    return result


def failed(r: dict) -> bool:
    return bool(r.get("errors") or r.get("timed_out") or r.get("math_errors")
                or r.get("cells_run", 0) < r.get("code_cells", 0))


def table(results: list[dict]) -> str:
    head = ["notebook", "time (s)", "cells run", "errors", "figures", "tables", "math", "MathJax errors", "status"]
    rows = [[r["notebook"], f"{r['time_s']:.0f}" if r["time_s"] is not None else "-",
             f"{r.get('cells_run', '-')}/{r.get('code_cells', '-')}", str(r.get("errors", "-")),
             str(r.get("figures", "-")), str(r.get("tables", "-")), str(r.get("math", "-")),
             str(r.get("math_errors", "-")), ("TIMED OUT" if r.get("timed_out") else "FAIL" if failed(r) else "ok")]
            for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


# ====================================================================== main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    ap.add_argument("--screenshots", type=Path, default=None,
                    help="folder for the screenshots (default: a new folder in the system temp folder)")
    ap.add_argument("--profile", default="ci", choices=("default", "ci", "colab"), help="SPO_LAB_PROFILE (ci)")
    ap.add_argument("--browser", default=None, help=f"Chromium executable (default: the first of {', '.join(BROWSERS)})")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per notebook, from Run All to idle")
    ap.add_argument("--keep", action="store_true", help="keep the working copy (the notebooks as run, with outputs)")
    args = ap.parse_args(argv)

    browser_path = find_browser(args.browser)
    missing = check_needs(browser_path, args.browser)
    if missing:
        print("check_notebooks_in_browser.py needs, and installs none of it:", *(f"  - {m}" for m in missing),
              sep="\n", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    paths = [p.resolve() for p in args.paths] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    shots = (args.screenshots or Path(tempfile.mkdtemp(prefix="spo_lab_screenshots_"))).resolve()
    shots.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="spo_lab_browser_check_"))
    work = working_copy(paths, tmp)
    port, token = free_port(), secrets.token_hex(16)
    print(f"JupyterLab on 127.0.0.1:{port} in {work} (profile {args.profile}); browser {browser_path}; "
          f"screenshots in {shots}", flush=True)
    server = start_jupyterlab(work, port, token, args.profile, tmp / "jupyterlab.log")
    results = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, headless=True)
            url = f"http://127.0.0.1:{port}/lab?reset&token={token}"
            page = browser.new_page(viewport=VIEWPORT)  # the first screen a reader sees
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector(".jp-DirListing-item", timeout=120_000)
            page.wait_for_selector(".jp-Launcher", timeout=30_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "00_first_screen.png"))
            page.close()
            for path in paths:  # one at a time: each notebook's kernel is shut down before the next starts
                r = check_notebook(browser, url, work, path.name, shots, args.timeout)
                shut_down_kernels(port, token)
                results.append(r)
                extra = f"; {r['first_error']}" if r.get("first_error") else ""
                extra += f"; MathJax: {r['math_error_text']}" if r.get("math_errors") else ""
                print(f"{path.name}: {'FAIL' if failed(r) else 'ok'} in {r['time_s'] or 0:.0f} s, "
                      f"{r.get('figures', 0)} figures, {r.get('errors', 0)} errors{extra}", flush=True)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if args.keep:
            print(f"working copy kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(results))
    print(f"\nscreenshots: {shots}")
    bad = [r["notebook"] for r in results if failed(r)]
    print(f"{len(results) - len(bad)} of {len(results)} notebooks ran without an error"
          + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
