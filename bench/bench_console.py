"""Benchmark of issue 5: a guest prints lines -> a real browser receives them.

Not a test: prints figures. Uses the dev database (a throw-away tenant, removed at the end),
the project's Redis, database 2 unless PORTAL_REDIS_DB or PORTAL_REDIS_URL says otherwise, its
own registry on 127.0.0.1, one compute-host worker (portal + host queue) and daphne (on 127.0.0.2), and
Debian's chromium (headless).

A HyperVM (TCG) prints ``bench line <n>`` every ``--interval`` seconds. Guest clocks are not
trusted: each line is stamped by the host clock when it lands in the instance's guest.log (a
tight poll in this process), when a plain Channels subscriber in this process gets it from the
console group (the baseline: file -> console agent -> Redis), and when the page's live.js hands
it over (``Date.now()``, the same clock). Only lines written after the page's console was live
count. Prints p50/p95/max of file -> subscriber and file -> browser (target p95 <= 250 ms).

    python -m bench.bench_console [--lines 150] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.dev")
os.environ.setdefault("PORTAL_REDIS_DB", "2")  # the project's Redis instance, its own database
django.setup()

from django.test import Client  # noqa: E402

from bench.stack import bench_stack, wait_for  # noqa: E402
from portal.choices import INSTANCE_UP  # noqa: E402
from portal.marathon import parse_app_definition  # noqa: E402
from portal.models import Instance  # noqa: E402
from portal.services.apps import app_create  # noqa: E402
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from vmworker.console import GuestLogTail  # noqa: E402
from vmworker.console_agent import console_group  # noqa: E402

TIMEOUT_S = 600
FILE_POLL_S = 0.002
START_DELAY_S = 20  # the guest waits this long before printing: time for the page to attach


def counter_app(image: str, lines: int, interval_s: float) -> dict:
    script = (
        f'sleep {START_DELAY_S}; i=0; while [ $i -lt {lines} ]; do echo "bench line $i"; i=$((i+1));'
        f" sleep {interval_s}; done; exec sleep 3600"
    )
    return {"id": "/console-bench", "instances": 1, "cpus": 0.5, "mem": 128, "cmd": script,
            "container": {"docker": {"image": image}}, "portDefinitions": []}  # fmt: skip


class FileStamps(threading.Thread):
    """Host-clock time at which each output line is first seen in guest.log."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.tail = GuestLogTail(path)
        self.stamps: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for line in self.tail.read():
                self.stamps[line.seq] = time.time()
            time.sleep(FILE_POLL_S)


class GroupSubscriber(threading.Thread):
    """The baseline: a plain Channels subscriber of the console group, in this process."""

    def __init__(self, instance_id: str):
        super().__init__(daemon=True)
        self.instance_id = instance_id
        self.stamps: dict[int, float] = {}
        self.joined = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._receive())

    async def _receive(self) -> None:
        from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

        layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        channel = await layer.new_channel()
        await layer.group_add(console_group(self.instance_id), channel)
        self.joined.set()
        while not self.stop.is_set():
            try:
                message = await asyncio.wait_for(layer.receive(channel), 1)
            except TimeoutError:
                continue
            now = time.time()
            for line in message.get("lines", ()):
                self.stamps.setdefault(line["seq"], now)


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  "
        f"max {ordered[-1] * 1000:6.1f} ms  (n={len(ordered)})"
    )


PAGE_SCRIPT = """url => new Promise(resolve => {
    window.benchLines = [];
    window.benchLiveAt = null;
    const element = document.createElement("div");
    element.className = "console";
    document.querySelector("main").appendChild(element);
    HyperLive.console(url, element, {
        onStatus: s => {
            if (s.state === "live" && window.benchLiveAt === null) { window.benchLiveAt = Date.now(); resolve(); }
        },
        onLines: lines => { const now = Date.now(); lines.forEach(l => window.benchLines.push([l.seq, now])); },
    });
})"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=150)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with bench_stack("console", "Console benchmark", {"PYTHONUNBUFFERED": "1"}) as stack:
        stack.start_worker(concurrency=4)
        base_url = stack.start_web()
        stack.claim_placement(180, restore_others=True)
        user, tenant, access, image, host_dir = stack.user, stack.tenant, stack.access, stack.image, stack.host_dir

        definition = parse_app_definition(counter_app(image, args.lines, args.interval))
        app = app_create(access=access, definition=definition).app
        instance = wait_for(
            "the guest to run", lambda: Instance.objects.filter(app=app, status__in=INSTANCE_UP).first(), TIMEOUT_S
        )
        booted_at = time.monotonic()
        instance_id = str(instance.pk)
        files = FileStamps(host_dir / "instances" / instance_id / "guest.log")
        files.start()
        subscriber = GroupSubscriber(instance_id)
        subscriber.start()
        subscriber.joined.wait(10)
        subscribed_at = time.time()

        browser_client = Client()
        browser_client.force_login(user)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context()
            context.add_cookies(
                [{"name": "sessionid", "value": browser_client.cookies["sessionid"].value, "url": base_url}]
            )
            page = context.new_page()
            page.goto(f"{base_url}/t/{tenant.slug}/")
            page.evaluate(PAGE_SCRIPT, f"/ws/t/{tenant.slug}/instances/{instance_id}/console/")
            live_at = page.evaluate("window.benchLiveAt") / 1000
            attached_s = time.monotonic() - booted_at
            if attached_s > START_DELAY_S:
                print(f"warning: the page attached {attached_s:.1f} s after boot; early lines do not count")
            page.wait_for_function(
                "n => window.benchLines.length && window.benchLines[window.benchLines.length - 1][0] >= n",
                arg=args.lines - 1,
                timeout=(START_DELAY_S + args.lines * args.interval * 20 + 60) * 1000,
            )
            page_stamps = {seq: at / 1000 for seq, at in page.evaluate("window.benchLines")}
            browser.close()
        time.sleep(0.5)
        files.stop.set()
        subscriber.stop.set()

        counted = [seq for seq, at in files.stamps.items() if at > max(live_at, subscribed_at)]
        to_subscriber = [subscriber.stamps[seq] - files.stamps[seq] for seq in counted if seq in subscriber.stamps]
        to_browser = [page_stamps[seq] - files.stamps[seq] for seq in counted if seq in page_stamps]
        missing = [seq for seq in range(args.lines) if seq not in page_stamps]
        print(f"{len(counted)} lines written after the page was live; guest interval {args.interval} s")
        print(f"guest.log -> Channels subscriber (baseline): {percentiles(to_subscriber)}")
        print(f"guest.log -> browser (live.js):              {percentiles(to_browser)}  target p95 <= 250 ms")
        portal_share = [
            page_stamps[s] - subscriber.stamps[s] for s in counted if s in page_stamps and s in subscriber.stamps
        ]
        print(f"portal share (browser - subscriber):         {percentiles(portal_share)}")
        print(f"lines the browser never got: {missing or 'none'}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
