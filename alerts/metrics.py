"""Metric names of the stack's own components, which rpcscope does not emit (so they are not in
:mod:`rpcscope.schema`): named once here for the alerts and the stack-health dashboard."""

from __future__ import annotations

from typing import Final

# fluent-plugin-prometheus, prometheus_output_monitor (fluentd-config/conf.d/prometheus.conf).
FLUENTD_BUFFER_AVAILABLE: Final = "fluentd_output_status_buffer_available_space_ratio"
FLUENTD_RETRIES: Final = "fluentd_output_status_retry_count"
FLUENTD_ERRORS: Final = "fluentd_output_status_num_errors"
FLUENTD_EMITTED: Final = "fluentd_output_status_emit_records"
#: Outputs that take records Elasticsearch refused (fluentd-config/conf.d/dead-letter.conf) and
#: chunks that exhausted their retries (output-elasticsearch.conf's <secondary>).
FLUENTD_DEAD_LETTER_IDS: Final = ("out_dead_letter_rejected", "out_elasticsearch_dead_letter")
# prometheus-community/elasticsearch_exporter.
ES_HEALTH: Final = "elasticsearch_cluster_health_status"
ES_FS_AVAILABLE: Final = "elasticsearch_filesystem_data_available_bytes"
ES_FS_SIZE: Final = "elasticsearch_filesystem_data_size_bytes"
# Prometheus's and Alertmanager's own metrics.
UP: Final = "up"
PROM_RULE_FAILURES: Final = "prometheus_rule_evaluation_failures_total"
PROM_NOTIFY_ERRORS: Final = "prometheus_notifications_errors_total"
PROM_NOTIFY_SENT: Final = "prometheus_notifications_sent_total"
PROM_NOTIFY_DROPPED: Final = "prometheus_notifications_dropped_total"
AM_NOTIFY_FAILED: Final = "alertmanager_notifications_failed_total"
AM_NOTIFY_TOTAL: Final = "alertmanager_notifications_total"

#: Elasticsearch's default disk watermarks (cluster.routing.allocation.disk.watermark.*): at
#: 85 % used no new shards are allocated to the node, at 90 % shards move away, at 95 % every
#: index with a shard there turns read-only (Fluentd's writes then fail).
ES_LOW_WATERMARK: Final = 0.85
ES_HIGH_WATERMARK: Final = 0.90

#: Fluentd's buffer_available_space_ratio is a percentage (0-100).
FLUENTD_BUFFER_MIN_FREE_PERCENT: Final = 20

