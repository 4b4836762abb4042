"""deploy/compose.yaml and its Grafana dashboard: the stack is what the docs say (two
gateway replicas on Redis, Prometheus scraping both, Grafana provisioned), and every
metric the dashboard's queries name is one a real gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

from runestone.access import digest
from tests.conftest import MakeGateway
from tests.servers import Gateway

DEPLOY = Path(__file__).parents[1] / "deploy"


def test_the_compose_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway-1", "gateway-2", "redis", "prometheus", "grafana"} <= set(services)
    for name in ("gateway-1", "gateway-2"):
        gateway = services[name]
        assert gateway["environment"]["RUNESTONE_REDIS_URL"] == "redis://redis:6379/0"
        assert gateway["read_only"] is True
        assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).is_file()
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["gateway-1:4001", "gateway-2:4001"]
    for volume in services["grafana"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists()


def _exported(gateway: Gateway) -> set[str]:
    """Every sample name the gateway's /metrics can show, from its TYPE lines."""
    text = httpx.get(f"{gateway.url}/metrics").text
    suffixes = {"counter": ("", "_total"), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names |= {name + suffix for suffix in suffixes.get(kind, ("",))}
    return names


def test_every_metric_the_dashboard_queries_is_exported(make_gateway: MakeGateway) -> None:
    aliases = f"""
defaults: {{retries: 0}}
aliases:
  smart: openai:gpt-4
prices:
  "openai:gpt-4": {{input: 10, output: 1000}}
keys:
  team-a: {{hash: "sha256:{digest("sk-dash")}", budgets: [{{usd: 10, per: day}}]}}
"""
    gateway = make_gateway(aliases)
    headers = {"authorization": "Bearer sk-dash"}
    hello = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
    httpx.post(f"{gateway.base_url}/chat/completions", json=hello, headers=headers)
    httpx.post(f"{gateway.base_url}/chat/completions", json={**hello, "stream": True})
    httpx.post(f"{gateway.base_url}/chat/completions", json={**hello, "model": "nope:x"})
    exported = _exported(gateway)
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "runestone.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(runestone_[a-z_]+)", target["expr"])
    }
    assert len(queried) >= 10
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("errors", "latency", "first token", "tokens", "cost", "key", "breaker", "budget"):
        assert topic in titles
