"""The dashboard in a real headless browser (Debian's chromium and chromium-driver, driven
by selenium) against a running 3-node network: the page loads, its plots carry data points
from the node, and the topology shows every node.

Set AKITA_DASHBOARD_SCREENSHOT=/path/to/file.png to keep a screenshot of the page."""

from __future__ import annotations

import http.client
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import akita
from tests.helpers import Node, free_port, net_sections, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver packages "
                              "(apt-get install chromium chromium-driver)"),
]

TASKS = {"pool_size": 2, "modules": "tests.sample_tasks", "task_timeout": 20}


def api_state(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/state")
        return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def start_nodes(make_node: Callable[..., Node], metrics_port: int) -> list[Node]:
    hub_port = free_port()
    nodes = []
    for index in range(3):
        sections = net_sections(
            hub_port, index == 0, f"node{index}",
            supervisor={"workers": "ledger, sampler, executor, gateway"}, tasks=TASKS,
            metrics={"listen": f"127.0.0.1:{metrics_port}" if index == 0 else ""})
        node = make_node(sections, name=f"n{index}")
        node.start(wait=index == 0)
        nodes.append(node)
    for node in nodes[1:]:
        node.wait_running()
    return nodes


def browser() -> Any:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    return webdriver.Chrome(options=options, service=service)


def test_dashboard_in_a_headless_browser(make_node: Callable[..., Node],
                                         tmp_path: Path) -> None:
    port = free_port()
    nodes = start_nodes(make_node, port)
    ids = {node.status()["node"]["id"] for node in nodes}
    with akita.Client(nodes[0].config_path, timeout_s=10) as client:
        for task_id in [client.submit("sample.add", [i, 1]) for i in range(6)]:
            client.wait(task_id, timeout=20)

    def cluster_formed() -> Any:
        mesh = api_state(port)["mesh"]
        members = {m for c in mesh["clusters"] for m in c.get("members", [])}
        return mesh if members == ids and len(mesh["peers"]) == 2 else None

    wait_for(cluster_formed, 30, "the dashboard's data showing one cluster of all three nodes")
    wait_for(lambda: sum(p["finished"] for p in api_state(port)["history"]) >= 6, 20,
             "six finished tasks in the dashboard history")

    driver = browser()
    try:
        driver.get(f"http://127.0.0.1:{port}/")

        def drawn() -> Any:
            found = driver.execute_script("""
                const count = sel => document.querySelectorAll(sel).length;
                return {cpu: count('#plot-cpu circle.pt'), rss: count('#plot-rss circle.pt'),
                        throughput: count('#plot-throughput circle.pt'),
                        queue: count('#plot-queue circle.pt'),
                        nodes: [...document.querySelectorAll('#topology g.node')]
                                 .map(g => g.dataset.id),
                        workers: [...document.querySelectorAll('#workers-body tr')]
                                 .map(r => r.cells[0].textContent + ':' + r.cells[1].textContent),
                        events: count('#events-body tr')};""")
            ready = (found["cpu"] >= 4 and found["rss"] >= 4 and found["throughput"] >= 2
                     and found["queue"] >= 2 and set(found["nodes"]) == ids
                     and len(found["workers"]) == 4 and found["events"] > 0)
            return found if ready else None

        found = wait_for(drawn, 30, "plots with points, every node in the topology",
                         interval_s=0.5)
        assert all(w.endswith(":running") for w in found["workers"]), found["workers"]
        coordinators = driver.execute_script(
            "return [...document.querySelectorAll('#topology g.node text')]"
            ".filter(t => t.textContent.endsWith('★')).length")
        assert coordinators == 1
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        shot = os.environ.get("AKITA_DASHBOARD_SCREENSHOT") or str(tmp_path / "dashboard.png")
        assert driver.save_screenshot(shot)
    finally:
        driver.quit()
