"""The alert rules, their unit tests, the example scrape config and the Grafana dashboard in monitoring/.

Each must only use what ober exports: every ``ober_*``/``process_*`` name and every label they filter, group or
join on is checked against ober's catalog (``ober.metrics.FAMILIES``). Prometheus' own tool then checks them:
``promtool check rules``, ``promtool test rules`` (the alerts fire, or not, on series as ober exports them),
``promtool check config``, and the dashboard's queries parsed as rules (Grafana's variables filled in).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.metrics import BY_NAME, FAMILIES
from tests.conftest import REPO, require

MONITORING = REPO / "monitoring"
RULES = MONITORING / "ober.rules.yml"
RULE_TESTS = MONITORING / "ober.rules.test.yml"
DASHBOARD = MONITORING / "grafana" / "ober-dashboard.json"
SCRAPE = MONITORING / "prometheus.yml"

TARGET_LABELS = {"instance", "job", "site", "le", "__name__"}
"""Labels Prometheus adds to every series (``site``: the scrape config's), and the histogram bucket's."""
KNOWN_LABELS = TARGET_LABELS | {label for family in FAMILIES for label in family.labels}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_METRIC = re.compile(r"\b((?:ober|process)_[a-z0-9_]+)\b")
_MATCHERS = re.compile(r"\b((?:ober|process)_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def family_of(name: str) -> str | None:
    """The catalog family a sample name belongs to (a histogram's suffixes included), or None."""
    if name in BY_NAME:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and BY_NAME.get(base) and BY_NAME[base].type == "histogram":
            return base
    return None


def problems(expr: str) -> list[str]:
    """What in a PromQL expression does not exist in ober's exposition."""
    found = []
    # Label names (in matchers and groupings) may look like metric names: `count by (ober_version)`.
    bare = _GROUPING.sub("", re.sub(r"\{[^}]*\}", "{}", expr))
    for name in _METRIC.findall(bare):
        if family_of(name) is None:
            found.append(f"{name} is not a metric ober exports")
    for name, body in _MATCHERS.findall(expr):
        family = family_of(name)
        if family is None:
            continue
        for label in _MATCHER_LABEL.findall(body):
            if label not in (*BY_NAME[family].labels, *TARGET_LABELS):
                found.append(f"{name} has no label {label}")
    for group in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in KNOWN_LABELS:
                found.append(f"no ober metric has a label {label} (in '{group}')")
    return found


def test_the_checker_catches_a_wrong_name_a_wrong_label_and_a_wrong_grouping() -> None:
    assert problems('max by (site, vip) (ober_vip_announced{name="s3-a"}) == 0') == []
    assert problems("rate(ober_health_check_duration_seconds_bucket[5m])") == []
    assert problems("ober_vip_announce == 0") == ["ober_vip_announce is not a metric ober exports"]
    assert problems('ober_drained{reason="x"}') == ["ober_drained has no label reason"]
    assert problems("sum by (vips) (ober_vip_announced)") == ["no ober metric has a label vips (in 'vips')"]
    assert problems("ober_drained_bucket") == ["ober_drained_bucket is not a metric ober exports"]
    assert problems("count by (ober_version) (ober_info)") == []


def rule_exprs() -> dict[str, str]:
    data = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in data["groups"] for rule in group["rules"]}


def test_the_rules_cover_what_operators_asked_for_and_use_only_what_ober_exports() -> None:
    exprs = rule_exprs()
    assert {
        "OberVipWithdrawnEverywhere",
        "OberNodeDrainedTooLong",
        "OberBgpSessionDown",
        "OberConfigDrift",
    } <= set(exprs)
    for alert, expr in exprs.items():
        assert problems(expr) == [], alert
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_rule_tests_feed_series_ober_really_exports() -> None:
    data = yaml.safe_load(RULE_TESTS.read_text())
    tested = set()
    for case in data["tests"]:
        for series in case["input_series"]:
            name = series["series"].partition("{")[0]
            if name == "up":
                continue
            assert problems(series["series"]) == [], series["series"]
        tested |= {check["alertname"] for check in case["alert_rule_test"]}
    assert tested == set(rule_exprs()), "every alert has a unit test"


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path=str(REPO / ".venv" / "bin"))
    require(found is not None, "promtool is not installed (make setup fetches it: scripts/fetch-promtool)")
    assert found is not None
    return found


def run_promtool(*args: str, cwd: Path = MONITORING) -> None:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_rules() -> None:
    run_promtool("check", "rules", RULES.name)


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    run_promtool("test", "rules", RULE_TESTS.name)


def test_promtool_checks_the_example_scrape_config() -> None:
    run_promtool("check", "config", SCRAPE.name)
    jobs = {job["job_name"]: job["metrics_path"] for job in yaml.safe_load(SCRAPE.read_text())["scrape_configs"]}
    assert jobs == {"ober": "/ober/metrics", "haproxy": "/metrics"}


# --- the dashboard ----------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_exprs() -> dict[str, str]:
    return {
        f"{panel['title']} ({target['refId']})": target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    }


def test_the_dashboard_is_well_formed_for_grafana() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    panels = data["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    variables = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", "site", "instance"} <= variables
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']}: undefined {used - variables}"


def test_the_dashboard_shows_what_operators_asked_for_and_only_what_ober_exports() -> None:
    exprs = panel_exprs()
    for title, expr in exprs.items():
        assert problems(expr) == [], title
    text = " ".join(exprs.values())
    for name in (
        "ober_vip_announced",
        "ober_vip_reason",
        "ober_vip_updates_total",
        "ober_bgp_session_up",
        "ober_bgp_session_uptime_seconds",
        "ober_drain_info",
        "ober_config_info",
        "ober_info",
        "ober_fleet_roll_info",
        "ober_health_check_duration_seconds_bucket",
        "ober_health_checks_total",
    ):
        assert name in text, f"no panel shows {name}"


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Grafana's variables filled in as it would (All selected), each query becomes a rule promtool must accept."""
    filled = {
        title: expr.replace("$__rate_interval", "1m").replace("$site", ".*").replace("$instance", ".*")
        for title, expr in panel_exprs().items()
    }
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(filled.values())],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    run_promtool("check", "rules", str(path), cwd=tmp_path)


@pytest.mark.parametrize("path", [RULES, RULE_TESTS, SCRAPE], ids=lambda p: p.name)
def test_monitoring_files_are_plain_yaml(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text()), dict)
