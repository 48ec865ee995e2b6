{{/*
Invalid combinations on the log side, failing with the value to set. Rendered by
templates/elasticsearch/validate.yaml; tests in tests/chart/test_logs_components.py.
(chart-core's _validation.tpl already covers "no Elasticsearch at all" and "external URL
without credentials".)
*/}}
{{- define "rpcscope-stack.logs.validate" -}}
{{- $v := .Values -}}
{{- if $v.elasticsearch.enabled -}}
{{- if eq (int $v.elasticsearch.replicas) 2 -}}
{{- fail "elasticsearch.replicas=2 cannot keep a master quorum when one node is down: set elasticsearch.replicas to 1 (single node) or 3 or more (multi-node)" -}}
{{- end -}}
{{- if and (not $v.elasticsearch.setup.enabled) (or $v.fluentd.enabled $v.elasticsearchExporter.enabled (and $v.kibana.enabled (not $v.kibana.elasticsearchCredentialsSecret))) -}}
{{- fail "elasticsearch.setup.enabled=false leaves the users Fluentd, the exporter and Kibana log in with uncreated: keep elasticsearch.setup.enabled=true, or turn those components off (Kibana: or set kibana.elasticsearchCredentialsSecret)" -}}
{{- end -}}
{{- end -}}
{{- /* External Elasticsearch: readers need their own users; the shipping user cannot read. */ -}}
{{- if and (not $v.elasticsearch.enabled) $v.elasticsearch.external.url -}}
{{- if and $v.grafana.enabled $v.grafana.datasources.elasticsearch.enabled (not $v.elasticsearch.external.readerCredentialsSecret) -}}
{{- fail "elasticsearch.external.readerCredentialsSecret is empty, but Grafana's log datasource reads from the external Elasticsearch and the writer in elasticsearch.external.credentialsSecret cannot read (log panels would get 403). Create a user with read + view_index_metadata on logs-rpcscope.*-* and set elasticsearch.external.readerCredentialsSecret to a Secret with its `username` and `password`, or set grafana.datasources.elasticsearch.enabled=false" -}}
{{- end -}}
{{- if and $v.kibana.enabled (not $v.kibana.elasticsearchCredentialsSecret) -}}
{{- fail "kibana.elasticsearchCredentialsSecret is empty, but Kibana runs against the external Elasticsearch and must not use the shipping user: set it to a Secret with `username` and `password` of your cluster's kibana_system user (or a user with the kibana_system role), or set kibana.enabled=false" -}}
{{- end -}}
{{- end -}}
{{- if and $v.fluentd.enabled (not $v.fluentd.daemonset.enabled) (not $v.fluentd.aggregator.enabled) -}}
{{- fail "fluentd.enabled=true but both fluentd.daemonset.enabled and fluentd.aggregator.enabled are false: enable one of them, or set fluentd.enabled=false" -}}
{{- end -}}
{{- if and $v.kibana.enabled $v.elasticsearch.enabled (ne (toString $v.kibana.image.tag) (toString $v.elasticsearch.image.tag)) -}}
{{- fail (printf "kibana.image.tag (%s) differs from elasticsearch.image.tag (%s): Kibana refuses to start against another Elasticsearch version. Set both to the same version" (toString $v.kibana.image.tag) (toString $v.elasticsearch.image.tag)) -}}
{{- end -}}
{{- end -}}
