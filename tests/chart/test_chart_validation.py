"""Invalid values fail the install with a message that names the value to set, and following
that advice makes the install render.

One case per `fail` in templates/_validation.tpl, plus the strict schema (unknown keys and wrong
types are refused instead of ignored).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
from chart_render import CHART_DIR, merge, render, render_error

_NO_LOGS: dict[str, Any] = {
    "elasticsearch": {"enabled": False},
    "kibana": {"enabled": False},
    "fluentd": {"enabled": False},
    "elasticsearchExporter": {"enabled": False},
    "grafana": {"datasources": {"elasticsearch": {"enabled": False}}},
}

# (id, bad values, words the message must contain, values that follow the message's advice)
CASES: list[tuple[str, dict[str, Any], list[str], dict[str, Any]]] = [
    (
        "grafana-without-prometheus",
        {"prometheus": {"enabled": False}, "alertmanager": {"allowNoAlerting": True}},
        ["prometheus.external.url"],
        {"prometheus": {"external": {"url": "http://prometheus.monitoring:9090"}}},
    ),
    (
        "rules-without-alertmanager",
        {"alertmanager": {"enabled": False}},
        ["alertmanager.external.url", "alertmanager.allowNoAlerting"],
        {"alertmanager": {"allowNoAlerting": True}},
    ),
    (
        "logs-without-elasticsearch",
        {"elasticsearch": {"enabled": False}},
        ["elasticsearch.external.url"],
        {
            "elasticsearch": {
                "external": {
                    "url": "https://es.corp:9200",
                    "credentialsSecret": "es-creds",
                    "readerCredentialsSecret": "es-reader",
                }
            },
            "kibana": {"elasticsearchCredentialsSecret": "es-kibana-system"},
        },
    ),
    (
        "external-elasticsearch-without-credentials",
        {"elasticsearch": {"enabled": False, "external": {"url": "https://es.corp:9200"}}},
        ["elasticsearch.external.credentialsSecret"],
        {
            "elasticsearch": {
                "external": {"credentialsSecret": "es-creds", "readerCredentialsSecret": "es-ro"}
            },
            "kibana": {"elasticsearchCredentialsSecret": "es-kibana-system"},
        },
    ),
    (
        "grafana-replicas-on-sqlite",
        {"grafana": {"replicas": 2}},
        ["grafana.replicas", "grafana.persistence.enabled"],
        {"grafana": {"replicas": 1}},
    ),
    (
        "duplicate-receiver",
        {
            "alertmanager": {
                "receivers": [{"name": "null", "webhook": {"url": "https://hooks.example.com/a"}}]
            }
        },
        ["alertmanager.receivers", '"null"'],
        {
            "alertmanager": {
                "receivers": [{"name": "hooks", "webhook": {"url": "https://hooks.example.com/a"}}]
            }
        },
    ),
    (
        "receiver-without-integration",
        {"alertmanager": {"receivers": [{"name": "team"}]}},
        ["alertmanager.receivers[team]", "webhook, slack, email or pagerduty"],
        {
            "alertmanager": {
                "receivers": [{"name": "team", "webhook": {"url": "https://h.example.com"}}]
            }
        },
    ),
    (
        "route-to-undefined-receiver",
        {"alertmanager": {"route": {"receiver": "team"}}},
        ["alertmanager.route.receiver", '"team"', "alertmanager.receivers"],
        {"alertmanager": {"route": {"receiver": "null"}}},
    ),
    (
        "child-route-to-undefined-receiver",
        {
            "alertmanager": {
                "route": {
                    "routes": [
                        {"matchers": ['a="b"'], "routes": [{"receiver": "pager"}]},
                    ]
                }
            }
        },
        ["alertmanager.route.routes[0].routes[0].receiver", '"pager"'],
        {
            "alertmanager": {
                "receivers": [
                    {
                        "name": "pager",
                        "pagerduty": {"routingKeySecret": {"secretName": "pd", "key": "k"}},
                    }
                ]
            }
        },
    ),
    (
        "operator-objects-without-selector-label",
        {"prometheus": {"operator": {"enabled": True}}},
        ["prometheus.operator.labels", "release"],
        {"prometheus": {"operator": {"labels": {"release": "kube-prometheus-stack"}}}},
    ),
    (
        "external-prometheus-blocked-by-networkpolicy",
        {
            "prometheus": {
                "enabled": False,
                "external": {"url": "http://prometheus.monitoring:9090"},
                "operator": {"enabled": True, "labels": {"release": "kps"}},
            },
            "alertmanager": {"allowNoAlerting": True},
        },
        ["networkPolicy.prometheusScrapeFrom"],
        {"networkPolicy": {"prometheusScrapeFrom": [{"namespaceSelector": {}}]}},
    ),
    (
        "memory-quantity-kubernetes-rejects",
        {"prometheus": {"resources": {"limits": {"memory": "2GB"}}}},
        ["prometheus.resources.limits.memory", '"2GB"', "2Gi", "2G"],
        {"prometheus": {"resources": {"limits": {"memory": "2Gi"}}}},
    ),
    (
        "retention-size-larger-than-volume",
        {"prometheus": {"retentionSize": "12GB", "persistence": {"size": "10Gi"}}},
        ["prometheus.retentionSize", "prometheus.persistence.size", "80%"],
        {"prometheus": {"retentionSize": "8GB"}},
    ),
    (
        "exposed-ui-blocked-by-networkpolicy",
        {"grafana": {"ingress": {"enabled": True, "hosts": ["grafana.example.com"]}}},
        ["grafana.ingress", "networkPolicy.ingressController.from"],
        {"networkPolicy": {"ingressController": {"from": [{"namespaceSelector": {}}]}}},
    ),
    (
        "alertmanager-config-secret-and-receivers",
        {
            "alertmanager": {
                "existingConfigSecret": "am-config",
                "receivers": [{"name": "hooks", "webhook": {"url": "https://hooks.example.com"}}],
            }
        },
        ["alertmanager.existingConfigSecret", "alertmanager.receivers"],
        {"alertmanager": {"receivers": []}},
    ),
    (
        "grafana-oidc-half-configured",
        {"grafana": {"oidc": {"enabled": True, "clientId": "grafana"}}},
        ["grafana.oidc.clientSecret.secretName", "grafana.oidc.authUrl"],
        {
            "grafana": {
                "oidc": {
                    "clientSecret": {"secretName": "oidc"},
                    "authUrl": "https://sso.example.com/auth",
                    "tokenUrl": "https://sso.example.com/token",
                }
            }
        },
    ),
    (
        "scrape-timeout-longer-than-interval",
        {"prometheus": {"scrapeInterval": "15s", "scrapeTimeout": "1m"}},
        ["prometheus.scrapeTimeout", "prometheus.scrapeInterval"],
        {"prometheus": {"scrapeTimeout": "10s"}},
    ),
]


@pytest.mark.parametrize(("bad", "words", "fix"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_combination_fails_naming_the_value_to_set(
    bad: dict[str, Any], words: list[str], fix: dict[str, Any]
) -> None:
    message = render_error(bad)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    # The advice works: applying it renders.
    assert render(merge(bad, fix)).objects


def test_too_long_a_name_prefix_fails_naming_the_fix() -> None:
    release = "observability-platform-prod-eu-west"  # + "-rpcscope-stack" = 50 characters
    message = render_error({}, release=release)
    assert "fullnameOverride" in message and "shorter release name" in message
    assert render({"fullnameOverride": "obs-prod-eu-west"}, release=release).objects


def test_longest_allowed_prefix_gives_valid_distinct_names() -> None:
    r = render({"fullnameOverride": "x" * 38}, release="r")
    seen = set()
    for obj in r.objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        assert (kind, name) not in seen, f"{kind}/{name} collides"
        seen.add((kind, name))
        if kind == "Service":
            assert len(name) <= 63, name
        if kind == "StatefulSet":
            assert len(name) <= 52, name  # pods carry a controller-revision-hash label


def test_every_fail_in_validation_tpl_has_a_case() -> None:
    """A new `fail` in _validation.tpl without a case above is caught here."""
    text = (CHART_DIR / "templates" / "_validation.tpl").read_text()
    fail_calls = len(re.findall(r"\{\{-?\s*fail\b", text))
    # The route check runs for the top route and, recursively, for child routes (two cases);
    # the name-length check has its own test above.
    assert len(CASES) + 1 == fail_calls + 1


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"prometheus": {"retension": "30d"}}, "retension"),
        ({"grafana": {"replicas": "two"}}, "replicas"),
        ({"prometheus": {"image": {"tag": ""}}}, "tag"),
        ({"prometheus": {"retention": "30 days"}}, "retention"),
        (
            {"alertmanager": {"receivers": [{"name": "s", "slack": {"channel": "#a"}}]}},
            "apiUrlSecret",
        ),
        ({"elasticsearch": {"external": {"url": "http://es:9200"}}}, "url"),
    ],
)
def test_schema_refuses_unknown_keys_and_wrong_types(values: dict[str, Any], where: str) -> None:
    chart = helm_python.Chart.load(str(CHART_DIR))
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(values)


def test_defaults_pass_the_schema() -> None:
    helm_python.Chart.load(str(Path(CHART_DIR))).validate_schema({})
