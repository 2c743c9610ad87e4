#!/usr/bin/env python3
"""Real-browser test of the Shoal dashboard (node/src/ui), served by real nodes.

Starts `shoal devstack --nodes 3` in a temporary home on loopback (with
SHOAL_UI_DIR unset, so the nodes serve the assets embedded in the binary),
drives headless Chromium through Selenium and checks, in order:

  1. the nodes page lists the 3 nodes and marks the node it talks to as self;
  2. the submit form uploads samples/build/wordcount.wasm and a text file the
     test writes, with redundancy 2, and opens the job page;
  3. the job page follows the job (event stream) to completed / succeeded,
     shows both executions agreeing and their timelines, and the logs;
  4. the result link opens the result browser; outputs/counts.tsv previews
     with the word count of the text written in 2; the file downloads;
  5. exitcode.wasm with args `3` ends with outcome failed and exit code 3
     (and the spec, holding markup as an argument, is shown as text);
  6. hello.wasm with redundancy 4 and quorum 4 on 3 nodes shows the API's
     warning and is cancelled with the cancel button;
  7. the jobs page lists the jobs with their states and outcomes; the
     state filter lists the cancelled job alone;
  8. on a node started with --require-token, a 401 opens the token field
     and the page works once the token is given (skipped, with a warning,
     while such a node refuses the dashboard's own files without a token).

Screenshots go to --out: nodes.png submit.png job.png browse.png preview.png
job-failed.png jobs.png token.png (and failure.png when a step fails), with the
devstack's and chromedriver's logs.

Usage: python3 tests/browser/dashboard.py --shoal target/debug/shoal --out target/dashboard
Needs: Debian's chromium and chromium-driver, Python 3 with selenium 4
(nothing is downloaded: SE_OFFLINE=true and explicit paths). Only loopback.
Exit status 0 on success, 1 with a FAIL line on failure, 2 on bad setup.
"""

import argparse
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

# Selenium must never try to fetch a browser or a driver.
os.environ["SE_OFFLINE"] = "true"
os.environ.pop("SE_MANAGER_PATH", None)

REPO = Path(__file__).resolve().parents[2]
WAIT_MAX = 60  # no single wait is longer than this (seconds)
TEXT = "the quick brown fox jumps over the lazy dog\nshoal tides move\n"  # 2 lines, 12 words
TEXT_NAME = "fox.txt"
FAIL_ARGS = "3 <b>bold</b>"


class Failure(Exception):
    pass


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------ devstack


class Proc:
    """A shoal process in its own process group, its stdout read line by line."""

    def __init__(self, argv, log_path, ui_dir=None):
        env = dict(os.environ)
        for k in ("SHOAL_UI_DIR", "SHOAL_NODE", "SHOAL_TOKEN", "SHOAL_HOME"):
            env.pop(k, None)
        if ui_dir:
            env["SHOAL_UI_DIR"] = str(ui_dir)
        self.log_path = log_path
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            env=env,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log_file.write(b"[stdout] " + raw)
            self.log_file.flush()
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, deadline, what):
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"{what} printed no `ready` in time; see {self.log_path}")
        try:
            line = self.lines.get(timeout=left)
        except queue.Empty:
            return ""
        if line is None:
            raise Failure(f"{what} exited (status {self.proc.wait()}) before `ready`; see {self.log_path}")
        return line

    def stop(self):
        if self.proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Node processes left in the group (their parent gone first) go too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log_file.close()


def loopback(url):
    host = urllib.parse.urlsplit(url).hostname
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise Failure(f"api {url} is not on loopback")


class Devstack(Proc):
    """`shoal devstack --nodes N`."""

    def __init__(self, shoal, home, out, nodes=3, ui_dir=None):
        super().__init__([str(shoal), "--home", str(home), "devstack", "--nodes", str(nodes)], out / "devstack.log", ui_dir)

    def wait_ready(self, n, timeout=WAIT_MAX):
        """Returns [(api url, peer id)] of the n nodes once `ready` is printed."""
        nodes = {}
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(deadline, "devstack")
            m = re.match(r"node (\d+) api=(\S+) peer=(\S+)", line)
            if m:
                peer = m.group(3).rsplit("/p2p/", 1)[-1]
                nodes[int(m.group(1))] = (m.group(2), peer)
            elif line.strip() == "ready":
                break
        if len(nodes) != n:
            raise Failure(f"devstack printed {len(nodes)} node lines, wanted {n}")
        out = [nodes[i] for i in sorted(nodes)]
        for url, _ in out:
            loopback(url)
        return out


class Node(Proc):
    """`shoal node` (loopback API and libp2p, OS-chosen ports)."""

    def __init__(self, shoal, home, out, extra):
        super().__init__([str(shoal), "--home", str(home), "node"] + extra, out / "node.log")

    def wait_ready(self, timeout=WAIT_MAX):
        deadline = time.monotonic() + timeout
        while True:
            m = re.match(r"ready api=(\S+) peer=(\S+)", self.next_line(deadline, "shoal node"))
            if m:
                loopback(m.group(1))
                return m.group(1), m.group(2).rsplit("/p2p/", 1)[-1]


# ------------------------------------------------------------------ browser helpers


class Page:
    def __init__(self, driver, out):
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.d = driver
        self.out = out
        self.By = By
        self.WebDriverWait = WebDriverWait
        self.TimeoutException = TimeoutException
        self.ignored = (NoSuchElementException, StaleElementReferenceException)

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def text(self, sel):
        """textContent of the first match, or None (read in the page: no stale elements)."""
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", sel)

    def count(self, sel):
        return self.js("return document.querySelectorAll(arguments[0]).length;", sel)

    def attr(self, sel, name):
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;", sel, name)

    def wait(self, cond, what, timeout=30):
        timeout = min(timeout, WAIT_MAX)
        try:
            return self.WebDriverWait(self.d, timeout, poll_frequency=0.2, ignored_exceptions=self.ignored).until(
                lambda d: cond()
            )
        except self.TimeoutException:
            raise Failure(f"timed out after {timeout} s waiting for {what}") from None

    def wait_sel(self, sel, what=None, timeout=30):
        return self.wait(lambda: self.count(sel) > 0, what or sel, timeout)

    def wait_page(self, page, timeout=30):
        sel = f'#view[data-page="{page}"][data-ready="1"]'
        self.wait_sel(sel, f"the {page} page to load", timeout)

    def click(self, sel, timeout=30):
        def go():
            els = self.d.find_elements(self.By.CSS_SELECTOR, sel)
            if not els or not els[0].is_displayed() or not els[0].is_enabled():
                return False
            els[0].click()
            return True

        self.wait(go, f"{sel} to be clickable", timeout)

    def find(self, sel, timeout=30):
        return self.wait(lambda: (self.d.find_elements(self.By.CSS_SELECTOR, sel) or [None])[0], sel, timeout)

    def shot(self, name):
        self.js("window.scrollTo(0, 0);")
        time.sleep(0.3)  # let the layout settle after scrolling
        path = self.out / name
        self.d.save_screenshot(str(path))
        return path


def start_browser(chromium, chromedriver, out, downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-proxy-server",
        "--window-size=1280,900",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
        "--lang=en-US",
    ):
        opts.add_argument(a)
    opts.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(chromedriver), log_output=str(out / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(WAIT_MAX)
    driver.set_script_timeout(WAIT_MAX)
    return driver


# ------------------------------------------------------------------ the test


def step(name):
    log(f"-- {name}")
    return time.monotonic()


def done(t0, msg):
    log(f"   ok: {msg} ({time.monotonic() - t0:.1f} s)")


def job_id_from_url(p):
    def get():
        m = re.search(r"#/jobs/(j-[0-9A-Za-z]+)$", p.d.current_url)
        return m.group(1) if m else None

    return p.wait(get, "the job page after submitting", 60)


def wait_job_end(p, what):
    def ended():
        state = p.text("#job-state")
        if state in ("completed", "failed", "cancelled"):
            return state
        return None

    try:
        return p.wait(ended, f"{what} to end", 60)
    except Failure:
        execs = p.js("return [...document.querySelectorAll('.execution')].map(e => e.dataset.state).join(',');")
        raise Failure(f"{what} did not end within 60 s: state {p.text('#job-state')!r}, executions {execs!r}") from None


def submit(p, module, inputs, args="", redundancy=1, quorum=None, screenshot=None):
    p.click("#nav-submit")
    p.wait_page("submit")
    p.find("#submit-module").send_keys(str(module))
    if inputs:
        p.find("#submit-inputs").send_keys("\n".join(str(i) for i in inputs))
        for i in inputs:
            p.wait_sel(f'#submit-input-list li[data-input="{i.name}"]', f"input {i.name} listed")
    if args:
        p.find("#submit-args").send_keys(args)
    red = p.find("#submit-redundancy")
    red.clear()
    red.send_keys(str(redundancy))
    if quorum is not None:
        q = p.find("#submit-quorum")
        q.clear()
        q.send_keys(str(quorum))
    if screenshot:
        p.shot(screenshot)
    p.click("#submit-button")
    err = None

    def moved():
        nonlocal err
        if re.search(r"#/jobs/j-", p.d.current_url):
            return True
        e = p.js("const e = document.querySelector('#submit-error'); return e && !e.hidden ? e.textContent : null;")
        if e:
            err = e
            return True
        return False

    p.wait(moved, "the submission to be accepted", 60)
    if err:
        raise Failure(f"the submit form shows an error: {err}")
    return job_id_from_url(p)


def run(args, out, tmp):
    shoal = Path(args.shoal).resolve()
    samples = Path(args.samples).resolve()
    wordcount = samples / "wordcount.wasm"
    exitcode = samples / "exitcode.wasm"
    hello = samples / "hello.wasm"
    for f, hint in (
        (shoal, "build it: cargo build"),
        (wordcount, "build the samples: make -C samples"),
        (exitcode, "build the samples: make -C samples"),
        (hello, "build the samples: make -C samples"),
        (Path(args.chromium), "apt-get install -y chromium"),
        (Path(args.chromedriver), "apt-get install -y chromium-driver"),
    ):
        if not f.exists():
            raise SetupError(f"{f} is missing; {hint}")

    text_file = tmp / TEXT_NAME
    text_file.write_text(TEXT)
    want_words = len(TEXT.split())
    want_lines = TEXT.count("\n")
    want_row = f"{TEXT_NAME}\t{want_lines}\t{want_words}\t{len(TEXT.encode())}"
    downloads = tmp / "downloads"
    downloads.mkdir()

    stack = None
    driver = None
    p = None
    started = time.monotonic()
    try:
        t0 = step("start devstack --nodes 3")
        stack = Devstack(shoal, tmp / "home", out, 3, args.ui_dir)
        nodes = stack.wait_ready(3)
        base, self_peer = nodes[0]
        done(t0, f"api {base}, self {self_peer}")

        t0 = step("start chromium")
        driver = start_browser(args.chromium, args.chromedriver, out, downloads)
        p = Page(driver, out)
        done(t0, driver.capabilities.get("browserVersion", "?"))

        # 1. nodes
        t0 = step("nodes page")
        driver.get(base + "/")
        p.wait_page("nodes")
        p.wait(lambda: p.count("#nodes-table tr[data-node]") == 3, "3 nodes on the nodes page", 60)
        selfs = p.js("return [...document.querySelectorAll('#nodes-table tr[data-self=\"true\"]')].map(r => r.dataset.node);")
        if selfs != [self_peer]:
            raise Failure(f"the nodes page marks {selfs} as self, wanted [{self_peer}]")
        if p.count('#nodes-table tr[data-self="true"] .badge-self') != 1:
            raise Failure("the self row has no self badge")
        listed = set(p.js("return [...document.querySelectorAll('#nodes-table tr[data-node]')].map(r => r.dataset.node);"))
        if listed != {peer for _, peer in nodes}:
            raise Failure(f"the nodes page lists {sorted(listed)}, wanted {sorted(peer for _, peer in nodes)}")
        p.shot("nodes.png")
        done(t0, "3 nodes listed, self marked")

        # 2. submit wordcount, redundancy 2
        t0 = step("submit wordcount.wasm with an input file, redundancy 2")
        job = submit(p, wordcount, [text_file], redundancy=2, screenshot="submit.png")
        done(t0, f"job {job}")

        # 3. follow it
        t0 = step("job page follows the job to completed")
        p.wait_page("job")
        if p.text("#job-id") != job:
            raise Failure(f"#job-id shows {p.text('#job-id')!r}, wanted {job}")
        state = wait_job_end(p, "the wordcount job")
        outcome = p.text("#job-outcome") or ""
        if state != "completed" or not outcome.startswith("succeeded"):
            raise Failure(
                f"wordcount job ended {state!r} with outcome {outcome!r}; error {p.text('#job-error')!r}, "
                f"failure {p.text('#job-failure')!r}"
            )
        if p.text("#job-exit-code") != "0":
            raise Failure(f"exit code shown {p.text('#job-exit-code')!r}, wanted 0")
        events = int(p.attr("#job-live", "data-events") or 0)
        if events < 1:
            raise Failure("the job page read no event from GET /v1/jobs/{id}/events (it fell back to polling)")
        p.wait(lambda: p.count('.execution[data-agreement="agreed"]') >= 2, "2 executions marked agreed", 30)
        if p.count("ol.timeline.approx") or p.count("ol.timeline li.step") < 4:
            raise Failure("the executions show no timeline from the API (the `timeline` array is missing)")
        for sel in ('li.step[data-step="bid_asked"]', 'li.step[data-step="completed"]'):
            if p.count(f'.execution[data-agreement="agreed"] {sel}') < 2:
                raise Failure(f"the agreed executions' timelines lack {sel}")
        p.wait(lambda: TEXT_NAME in (p.text("#job-logs pre.stdout") or ""), "the logs (stdout naming the input)", 30)
        if p.count("#result-link") != 1:
            raise Failure("no #result-link on the completed job")
        p.shot("job.png")
        done(t0, f"completed, succeeded, exit 0, {events} event(s) read, 2 agreed, logs shown")

        # 4. result browser
        t0 = step("open the result and preview outputs/counts.tsv")
        result_cid = (p.text("#result-link") or "").strip()
        p.click("#result-link")
        p.wait_page("browse")
        for name in ("outputs", "stdout", "stderr", "exitCode"):
            if p.count(f'#browse-list tr[data-entry="{name}"]') != 1:
                raise Failure(f"the result's listing has no entry {name!r}")
        if result_cid not in driver.current_url:
            raise Failure(f"the browser opened {driver.current_url}, not the result {result_cid}")
        p.shot("browse.png")
        p.click('#browse-list tr[data-entry="outputs"] a.entry-link')
        p.wait_page("browse")
        p.wait_sel('#browse-list tr[data-entry="counts.tsv"]', "counts.tsv in outputs/")
        p.click('#browse-list tr[data-entry="counts.tsv"] a.entry-link')
        p.wait_page("browse")
        p.wait_sel('#preview[data-kind="text"] #preview-text', "a text preview of counts.tsv")
        preview = p.text("#preview-text") or ""
        if want_row not in preview.splitlines():
            raise Failure(f"counts.tsv preview lacks the row {want_row!r}; it shows {preview[:500]!r}")
        p.shot("preview.png")
        p.click("#download-file")
        target = downloads / "counts.tsv"
        p.wait(lambda: target.exists() and target.read_text() == preview, "counts.tsv to download", 30)
        done(t0, f"preview shows {want_row!r}; download matches")

        # 5. a failing guest
        t0 = step("submit exitcode.wasm with args `3`")
        failing = submit(p, exitcode, [], args=FAIL_ARGS, redundancy=1)
        p.wait_page("job")
        state = wait_job_end(p, "the exitcode job")
        p.wait(lambda: (p.text("#job-outcome") or "").startswith("failed"), "outcome failed", 30)
        if p.text("#job-exit-code") != "3":
            raise Failure(f"exitcode job shows exit code {p.text('#job-exit-code')!r}, wanted 3")
        spec = p.text("#job-spec") or ""
        if "<b>bold</b>" not in spec or p.count("#job-spec b"):
            raise Failure("the spec's markup argument was not shown as plain text")
        p.wait(lambda: "exiting" in (p.text("#job-logs pre.stdout") or ""), "the failing job's stdout", 30)
        p.shot("job-failed.png")
        done(t0, f"job {failing} {state}, outcome failed, exit code 3")

        # 6. a job that cannot complete: the API's warning, then cancel
        t0 = step("submit hello.wasm with redundancy 4, quorum 4 on 3 nodes; cancel it")
        stuck = submit(p, hello, [], redundancy=4, quorum=4)
        p.wait_page("job")
        p.wait(lambda: "redundancy.count is 4" in (p.text("#job-warnings") or ""), "the API's warning on the job page", 10)
        p.wait(lambda: p.count(".execution") >= 1 and p.text("#job-state") in ("queued", "running"), "the job to run", 30)
        if p.attr("#job-live", "data-mode") != "events":
            raise Failure(f"the running job is not followed by its event stream (#job-live: {p.text('#job-live')!r})")
        # Leave the live page and come back: the stream is closed cleanly (no uncaught errors).
        p.click("#nav-jobs")
        p.wait_page("jobs")
        driver.back()
        p.wait_page("job")
        p.wait(lambda: p.text("#job-id") == stuck and p.attr("#job-live", "data-mode") == "events", "the job page again", 15)
        p.click("#job-cancel")
        p.wait(lambda: "again" in (p.text("#job-cancel") or ""), "the cancel button to ask for confirmation", 5)
        p.click("#job-cancel")
        p.wait(lambda: p.text("#job-state") == "cancelled", "the job to be cancelled", 30)
        if p.count("#job-cancel:not([hidden])"):
            raise Failure("the cancel button is still shown on a cancelled job")
        done(t0, f"job {stuck}: warning shown, cancelled")

        # 7. jobs list
        t0 = step("jobs page lists the jobs")
        p.click("#nav-jobs")
        p.wait_page("jobs")
        row = f'#jobs-table tr[data-job="{job}"]'
        p.wait_sel(f'{row}[data-state="completed"]', f"{job} listed as completed")
        if not (p.text(f"{row} .job-outcome") or "").startswith("succeeded"):
            raise Failure(f"the jobs page shows {job}'s outcome as {p.text(row + ' .job-outcome')!r}")
        frow = f'#jobs-table tr[data-job="{failing}"]'
        p.wait_sel(frow, f"{failing} listed")
        if not (p.text(f"{frow} .job-outcome") or "").startswith("failed"):
            raise Failure(f"the jobs page shows {failing}'s outcome as {p.text(frow + ' .job-outcome')!r}")
        p.shot("jobs.png")
        from selenium.webdriver.support.ui import Select

        Select(p.find("#jobs-state")).select_by_value("cancelled")
        p.wait(lambda: "state=cancelled" in driver.current_url, "the state filter in the address", 10)
        p.wait_page("jobs")
        p.wait(
            lambda: p.js("return [...document.querySelectorAll('#jobs-table tr[data-job]')].map(r => r.dataset.job);") == [stuck],
            "the cancelled filter to list the cancelled job alone",
            10,
        )
        done(t0, "listed with their states and outcomes; the state filter works")

        # 8. a node that requires its token
        t0 = step("a node with --require-token: the dashboard asks for the token")
        tok_home = tmp / "token-home"
        tok = Node(shoal, tok_home, out, ["--require-token"])
        try:
            url, _ = tok.wait_ready()
            token = (tok_home / "api-token").read_text().strip()
            import urllib.request
            import urllib.error

            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                direct.open(url + "/", timeout=10).close()
                page_open = True
            except urllib.error.HTTPError as e:
                page_open = False
                log(f"   WARN: skipped: GET / on a --require-token node answers {e.code}: the dashboard cannot load there "
                    "(backend: the UI files must be served without the token)")
            if page_open:
                driver.get(url + "/")
                # The page cannot finish loading its data before the token:
                # it asks for it.
                p.wait_sel("#token-panel:not([hidden])", "the token panel to open on a 401", 15)
                p.wait(lambda: "401" in (p.text("#nodes-error") or ""), "the nodes page to show the 401", 15)
                p.find("#token-input").send_keys(token)
                p.click("#token-save")
                p.wait(lambda: p.count("#nodes-table tr[data-self=\"true\"]") == 1, "the nodes page with the token", 20)
                shown = p.js("return document.body.innerText + [...document.querySelectorAll('input')].map(i => i.value).join(' ');")
                if token in shown:
                    raise Failure("the token is displayed on the page")
                p.shot("token.png")
                done(t0, "401 asked for the token; with it the node answered; the token is not shown")
        finally:
            tok.stop()

        errors = [
            e for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and ("Uncaught" in e.get("message", "") or "Content Security Policy" in e.get("message", ""))
        ]
        if errors:
            raise Failure("the page logged errors: " + "; ".join(e["message"] for e in errors))
        log(f"PASS: dashboard test in {time.monotonic() - started:.1f} s; screenshots in {out}")
        return 0
    except Failure:
        if p is not None:
            try:
                p.d.save_screenshot(str(out / "failure.png"))
                (out / "failure.txt").write_text(
                    f"url: {p.d.current_url}\n\n" + (p.js("return document.body.innerText;") or "")
                )
                for e in p.d.get_log("browser"):
                    log(f"   browser: {e.get('level')} {e.get('message')}")
            except Exception as e:  # the browser may be gone
                log(f"   (no failure screenshot: {e})")
        raise
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception as e:
                log(f"   (quitting the browser: {e})")
        if stack is not None:
            stack.stop()


class SetupError(Exception):
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shoal", default=str(REPO / "target/debug/shoal"), help="the shoal binary")
    ap.add_argument("--out", default=str(REPO / "target/dashboard"), help="where screenshots and logs go")
    ap.add_argument("--samples", default=str(REPO / "samples/build"), help="the built sample guests")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home")
    ap.add_argument(
        "--ui-dir",
        help="development only: serve the dashboard from this directory (SHOAL_UI_DIR) instead of the embedded files",
    )
    args = ap.parse_args()
    # A SIGTERM (a CI timeout) unwinds through the `finally` blocks: the nodes and the browser go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    tmp = Path(tempfile.mkdtemp(prefix="shoal-dashboard-"))
    try:
        try:
            import selenium  # noqa: F401
        except ImportError:
            raise SetupError("selenium is not installed: python3 -m venv .deps/py && .deps/py/bin/pip install selenium")
        return run(args, out, tmp)
    except SetupError as e:
        log(f"SETUP: {e}")
        return 2
    except Failure as e:
        log(f"FAIL: {e}")
        log(f"      screenshots and logs in {out}")
        return 1
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
