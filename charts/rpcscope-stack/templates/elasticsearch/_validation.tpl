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
{{- /* The JVM also needs off-heap memory (Lucene, direct buffers, threads): a heap close to the
limit gets the pod OOM-killed. Elastic's advice is half the memory; refuse more than 3/4. */ -}}
{{- $limit := dig "limits" "memory" "" $v.elasticsearch.resources | toString -}}
{{- if and $v.elasticsearch.heapSize $limit -}}
{{- $heap := include "rpcscope-stack.sizeBytes" (dict "value" $v.elasticsearch.heapSize "kind" "jvm") | float64 -}}
{{- $mem := include "rpcscope-stack.sizeBytes" (dict "value" $limit "kind" "quantity") | float64 -}}
{{- if gt $heap (mulf $mem 0.75) -}}
{{- fail (printf "elasticsearch.heapSize (%s) is more than 3/4 of elasticsearch.resources.limits.memory (%s): the JVM needs memory outside the heap and the pod would be OOM-killed. Set elasticsearch.heapSize to half the limit, leave it empty (Elasticsearch then takes half), or raise the limit" $v.elasticsearch.heapSize $limit) -}}
{{- end -}}
{{- end -}}
{{- /* A running cluster cannot change between single-node and multi-node discovery in place:
a single node formed its own cluster (new nodes would form another), and 3 -> 1 loses the
quorum. The running StatefulSet (lookup; empty on install and offline renders) tells. */ -}}
{{- $sts := include "rpcscope-stack.lookupSecret" (dict "ctx" . "kind" "StatefulSet" "apiVersion" "apps/v1" "name" (include "rpcscope-stack.componentName" (dict "ctx" . "component" "elasticsearch"))) | fromJson -}}
{{- $running := int (dig "spec" "replicas" 0 $sts) -}}
{{- $wanted := int $v.elasticsearch.replicas -}}
{{- if and (gt $running 0) (ne (eq $running 1) (eq $wanted 1)) -}}
{{- fail (printf "elasticsearch.replicas: the running Elasticsearch has %d node(s) and this upgrade asks for %d, but a cluster cannot switch between single-node and multi-node in place (a single node formed a cluster of its own; going down to 1 loses the quorum). Keep elasticsearch.replicas=%d, or snapshot the data, uninstall, delete the PVCs (data-%s-*) and install with the new size" $running $wanted $running (include "rpcscope-stack.componentName" (dict "ctx" . "component" "elasticsearch"))) -}}
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
{{- /* A file buffer larger than its emptyDir's sizeLimit gets the pod evicted before Fluentd's own
limit ever applies. */ -}}
{{- if $v.fluentd.enabled -}}
{{- range $role := list "daemonset" "aggregator" -}}
{{- $f := get $v.fluentd $role -}}
{{- if $f.enabled -}}
{{- $buffer := include "rpcscope-stack.sizeBytes" (dict "value" $f.bufferTotalLimitSize "kind" "fluentd") | float64 -}}
{{- $disk := include "rpcscope-stack.sizeBytes" (dict "value" $f.stateSizeLimit "kind" "quantity") | float64 -}}
{{- if ge $buffer $disk -}}
{{- fail (printf "fluentd.%s.bufferTotalLimitSize (%s) does not fit fluentd.%s.stateSizeLimit (%s): the kubelet evicts the pod when the buffer volume is full, before Fluentd blocks. Raise fluentd.%s.stateSizeLimit above the buffer plus head-room, or lower the buffer" $role $f.bufferTotalLimitSize $role (toString $f.stateSizeLimit) $role) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $v.fluentd.enabled (not $v.fluentd.daemonset.enabled) (not $v.fluentd.aggregator.enabled) -}}
{{- fail "fluentd.enabled=true but both fluentd.daemonset.enabled and fluentd.aggregator.enabled are false: enable one of them, or set fluentd.enabled=false" -}}
{{- end -}}
{{- if and $v.kibana.enabled $v.elasticsearch.enabled (ne (toString $v.kibana.image.tag) (toString $v.elasticsearch.image.tag)) -}}
{{- fail (printf "kibana.image.tag (%s) differs from elasticsearch.image.tag (%s): Kibana refuses to start against another Elasticsearch version. Set both to the same version" (toString $v.kibana.image.tag) (toString $v.elasticsearch.image.tag)) -}}
{{- end -}}
{{- end -}}
