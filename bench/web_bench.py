"""Web app first load, measured by Chromium's own Performance API, and the initial JavaScript size.

Serves the built app from the real gateway (alone: the login screen needs no backend) and loads it
in Debian's Chromium with a cold cache, then warm. "Interactive" is the app's own
`performance.mark('sa:interactive')`, set when React has committed the first screen. Baseline in
the same run: a static HTML page with no script served by the same gateway.

    python -m bench.web_bench            # 15 cold + 15 warm loads
    python -m bench.web_bench --quick    # 3 of each
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from studyassist.core.testing import CHROMIUM, CHROMIUM_ARGS, spawn_service

from bench.report import record as record_figure

ROOT = Path(__file__).resolve().parents[1]
WEB_DIR = ROOT / "services" / "gateway" / "web"
BUDGET_KB = 200.0
BASELINE_PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>baseline</title></head><body><p>baseline</p></body></html>"
)

PAGES = [
    ("baseline page, cold", "/bench-baseline.html", ""),
    ("web app login, cold", "/", "sa:interactive"),
    ("web app signed in, cold", "/", "sa:shell"),
]
SIGNED_IN_JS = """try { if (!sessionStorage.getItem('bench')) { sessionStorage.setItem('bench', '1');
  localStorage.setItem('sa.auth', JSON.stringify({accessToken: 'bench', refreshToken: 'bench',
  user: {user_id: 'bench', email: 'bench@example.com'}})); } } catch (e) {}
// The gateway would refuse the stored token's GET /v1/config and sign the page out before the
// workspace appears: answer it as for a student, in the page (routing in Playwright would turn the
// HTTP cache off and spoil the warm loads).
const benchFetch = window.fetch.bind(window);
window.fetch = (input, init) => String(input && input.url ? input.url : input).endsWith('/v1/config')
  ? Promise.resolve(new Response('{"upload_max_bytes": 50000000, "max_body_bytes": 1048576, "is_admin": false}',
      {status: 200, headers: {'content-type': 'application/json'}}))
  : benchFetch(input, init);"""
TIMINGS_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  const mark = performance.getEntriesByName('sa:shell')[0] || performance.getEntriesByName('sa:interactive')[0];
  const resources = performance.getEntriesByType('resource');
  return {
    ttfb: nav.responseStart,
    dcl: nav.domContentLoadedEventEnd,
    load: nav.loadEventEnd,
    fcp: fcp ? fcp.startTime : null,
    interactive: mark ? mark.startTime : null,
    transferred: nav.transferSize + resources.reduce((sum, r) => sum + (r.transferSize || 0), 0),
    js_transferred: resources.filter(r => r.name.endsWith('.js')).reduce((sum, r) => sum + (r.transferSize || 0), 0),
  };
}"""


def gz(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9))


def initial_assets(dist: Path) -> list[Path]:
    """What index.html makes the browser fetch before the first screen: entry script, preloads, CSS."""
    html = (dist / "index.html").read_text()
    refs = re.findall(r'<script[^>]+src="([^"]+)"', html) + re.findall(r'<link[^>]+href="([^"]+)"', html)
    return [dist / ref.lstrip("/") for ref in refs if (dist / ref.lstrip("/")).is_file()]


def size_report(dist: Path) -> None:
    initial = initial_assets(dist)
    initial_js = [p for p in initial if p.suffix == ".js"]
    all_js = sorted((dist / "assets").glob("*.js"))
    lazy_js = [p for p in all_js if p not in initial_js]
    initial_kb = sum(gz(p) for p in initial_js) / 1024
    print("== initial JavaScript (gzip -9) ==")
    for path in initial:
        print(f"  {path.relative_to(dist)}: {path.stat().st_size / 1024:.1f} KB raw, {gz(path) / 1024:.1f} KB gzip")
    verdict = "within" if initial_kb <= BUDGET_KB else "OVER"
    print(f"initial JS: {initial_kb:.1f} KB gzip   (budget {BUDGET_KB:.0f} KB; {verdict})")
    all_kb = sum(gz(p) for p in all_js) / 1024
    record_figure("initial_js", initial_kb, f"{initial_kb:.1f} KB", f"all JS in the build {all_kb:.1f} KB")
    print(f"baseline, all JS in dist: {sum(gz(p) for p in all_js) / 1024:.1f} KB gzip; lazy chunks, fetched on demand:")
    for path in lazy_js:
        print(f"  {path.name}: {gz(path) / 1024:.1f} KB gzip")


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms"


def load_timings(base_url: str, runs: int) -> dict[str, dict[str, list[float]]]:
    from playwright.sync_api import sync_playwright

    results: dict[str, dict[str, list[float]]] = {}

    def record(kind: str, timings: dict[str, Any]) -> None:
        bucket = results.setdefault(kind, {})
        for key, value in timings.items():
            if value is not None:
                bucket.setdefault(key, []).append(float(value))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            for round_ in range(runs + 1):  # round 0 warms the gateway and the OS page cache; discarded
                for kind, path, mark in PAGES:
                    context = browser.new_context(base_url=base_url)
                    if "signed in" in kind:
                        # A stored session: the workspace chunk loads at once (its API calls fail here: no
                        # backend; GET /v1/config is answered in the page, see SIGNED_IN_JS).
                        context.add_init_script(SIGNED_IN_JS)
                    page = context.new_page()
                    page.goto(path, wait_until="load")
                    if mark:
                        page.wait_for_function(f"() => performance.getEntriesByName('{mark}').length > 0")
                    cold = page.evaluate(TIMINGS_JS)
                    # Warm: same context, cached hashed assets, index.html revalidated.
                    page.goto(path, wait_until="load")
                    if mark:
                        page.wait_for_function(f"() => performance.getEntriesByName('{mark}').length > 0")
                    warm = page.evaluate(TIMINGS_JS)
                    context.close()
                    if round_ > 0:
                        record(kind, cold)
                        record(kind.replace("cold", "warm"), warm)
        finally:
            browser.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 loads of each kind instead of 15")
    args = parser.parse_args()
    runs = 3 if args.quick else 15

    built = subprocess.run(["make", "-s", "-C", str(WEB_DIR), "build"], capture_output=True, text=True)
    if built.returncode != 0:
        print(built.stdout[-2000:], built.stderr[-2000:], file=sys.stderr)
        return 1
    dist = WEB_DIR / "dist"
    size_report(dist)

    if not CHROMIUM.exists():
        print("first load: not measured, /usr/bin/chromium is missing (apt-get install chromium)")
        return 0

    with tempfile.TemporaryDirectory(prefix="sa-web-bench-") as tmp:
        served = Path(tmp) / "dist"
        shutil.copytree(dist, served)
        (served / "bench-baseline.html").write_text(BASELINE_PAGE)
        nowhere = "127.0.0.1:9"
        gateway = spawn_service(
            "gateway",
            {
                "GATEWAY_PORT": "0",
                "CHAT_ADDR": nowhere,
                "STORAGE_ADDR": nowhere,
                "METRICS_ADDR": nowhere,
                "DATA_DIR": str(Path(tmp) / "data"),
                "WEB_DIST_DIR": str(served),
                "REDIS_URL": "",
            },
        )
        try:
            results = load_timings(f"http://{gateway.address}", runs)
        finally:
            gateway.stop()

    print(f"\n== first load on localhost, Chromium Performance API, {runs} runs each ==")
    labels = {
        "ttfb": "first byte",
        "fcp": "first contentful paint",
        "dcl": "DOMContentLoaded",
        "load": "load event",
        "interactive": "interactive (app mark)",
    }
    kinds = [kind for kind, _, _ in PAGES]
    for kind in kinds + [kind.replace("cold", "warm") for kind in kinds]:
        print(f"{kind}:")
        for key, label in labels.items():
            values = results.get(kind, {}).get(key)
            if values:
                print(f"  {label:24s} {summary(values)}")
        transferred = results.get(kind, {}).get("transferred")
        if transferred:
            print(f"  {'bytes over the wire':24s} median {statistics.median(transferred) / 1024:7.1f} KB")
    login = results.get("web app login, cold", {}).get("interactive")
    baseline = results.get("baseline page, cold", {}).get("fcp")
    if login:
        cold = statistics.median(login)
        record_figure(
            "first_load",
            cold,
            f"{cold:.0f} ms median over {len(login)} cold loads (Chromium, localhost)",
            f"a no-script page from the same gateway: first paint {statistics.median(baseline):.0f} ms"
            if baseline
            else "",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
