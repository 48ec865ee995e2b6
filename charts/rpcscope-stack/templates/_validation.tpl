{{/*
Invalid value combinations fail the install with a message naming the value to set, instead of
rendering a stack that starts and then silently does nothing. values.schema.json catches single
values (types, unknown keys); this file catches combinations. Each `fail` has a test in
tests/chart/test_validation.py.
*/}}
{{- define "rpcscope-stack.validate" -}}
{{- $v := .Values -}}

{{- /* Names: the longest component object is "<fullname>-elasticsearch-exporter" (and Services
must fit 63 characters); StatefulSet names must fit 52 for their pods' revision-hash label. A
longer prefix would be truncated into colliding names, so refuse it up front. */ -}}
{{- $full := include "rpcscope-stack.fullname" . -}}
{{- if gt (len $full) 38 -}}
{{- fail (printf "the name prefix %q is %d characters, more than 38: component names would be truncated and collide. Use a shorter release name, or set fullnameOverride (at most 38 characters)" $full (len $full)) -}}
{{- end -}}

{{- /* Grafana needs a Prometheus to query. */ -}}
{{- if and $v.grafana.enabled (not $v.prometheus.enabled) (not $v.prometheus.external.url) -}}
{{- fail "prometheus.enabled is false but Grafana needs a Prometheus: set prometheus.external.url (e.g. http://prometheus-operated.monitoring:9090) or prometheus.enabled=true" -}}
{{- end -}}

{{- /* Prometheus rules without anywhere to send alerts would fire into the void. */ -}}
{{- if and $v.prometheus.enabled (not $v.alertmanager.enabled) (not $v.alertmanager.external.url) (not $v.alertmanager.allowNoAlerting) -}}
{{- fail "alertmanager.enabled is false, so alerts would go nowhere: set alertmanager.external.url to your Alertmanager, or alertmanager.allowNoAlerting=true to evaluate rules without notifications" -}}
{{- end -}}

{{- /* The log components need an Elasticsearch: ours or an external one. */ -}}
{{- $needsES := or $v.kibana.enabled $v.fluentd.enabled $v.elasticsearchExporter.enabled (and $v.grafana.enabled $v.grafana.datasources.elasticsearch.enabled) -}}
{{- if and $needsES (not $v.elasticsearch.enabled) (not $v.elasticsearch.external.url) -}}
{{- fail "elasticsearch.enabled is false but Kibana, Fluentd, the elasticsearch-exporter or Grafana's log datasource need one: set elasticsearch.external.url (https://...) and elasticsearch.external.credentialsSecret, or elasticsearch.enabled=true (or turn those components off)" -}}
{{- end -}}

{{- /* External Elasticsearch always has security on (ES 8+): without credentials every request is a 401. */ -}}
{{- if and $needsES (not $v.elasticsearch.enabled) $v.elasticsearch.external.url (not $v.elasticsearch.external.credentialsSecret) -}}
{{- fail "elasticsearch.external.url is set without credentials: set elasticsearch.external.credentialsSecret to a Secret with `username` and `password` keys" -}}
{{- end -}}

{{- /* SSO needs its endpoints and a client secret from a Secret; an empty one fails every login. */ -}}
{{- if and $v.grafana.enabled $v.grafana.oidc.enabled (not (and $v.grafana.oidc.clientId $v.grafana.oidc.clientSecret.secretName $v.grafana.oidc.authUrl $v.grafana.oidc.tokenUrl)) -}}
{{- fail "grafana.oidc.enabled needs grafana.oidc.clientId, grafana.oidc.clientSecret.secretName (an existing Secret with the client secret), grafana.oidc.authUrl and grafana.oidc.tokenUrl (apiUrl too, unless the ID token carries the claims): set them, or grafana.oidc.enabled=false" -}}
{{- end -}}

{{- /* Grafana on SQLite cannot run more than one replica against one ReadWriteOnce volume. */ -}}
{{- if and $v.grafana.enabled (gt (int $v.grafana.replicas) 1) $v.grafana.persistence.enabled -}}
{{- fail "grafana.replicas > 1 with grafana.persistence.enabled: SQLite on one ReadWriteOnce volume cannot be shared. Set grafana.replicas=1, or configure an external database in grafana.grafana.ini (section `database`) and set grafana.persistence.enabled=false" -}}
{{- end -}}

{{- /* Alertmanager routes must name receivers that exist (Alertmanager would crash-loop). */ -}}
{{- if and $v.alertmanager.enabled $v.alertmanager.existingConfigSecret $v.alertmanager.receivers -}}
{{- fail "alertmanager.existingConfigSecret replaces the whole Alertmanager configuration, so alertmanager.receivers would be ignored: put your receivers into that Secret's alertmanager.yml and set alertmanager.receivers=[] (or leave existingConfigSecret empty)" -}}
{{- end -}}
{{- if and $v.alertmanager.enabled (not $v.alertmanager.existingConfigSecret) -}}
{{- $names := list "null" -}}
{{- range $v.alertmanager.receivers -}}
{{- if has .name $names -}}
{{- fail (printf "alertmanager.receivers: the name %q is used twice (\"null\" is built in): give every receiver a unique name" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- if not (or .webhook .slack .email .pagerduty) -}}
{{- fail (printf "alertmanager.receivers[%s] has no integration: set one of webhook, slack, email or pagerduty" .name) -}}
{{- end -}}
{{- end -}}
{{- include "rpcscope-stack.validate.route" (dict "route" $v.alertmanager.route "names" $names "path" "alertmanager.route") -}}
{{- end -}}

{{- /* Prometheus Operator objects without the selecting label are silently ignored. */ -}}
{{- if and $v.prometheus.operator.enabled (not $v.prometheus.operator.labels) (not $v.prometheus.operator.allowEmptyLabels) -}}
{{- fail "prometheus.operator.enabled needs prometheus.operator.labels (e.g. release: kube-prometheus-stack) or your Prometheus ignores the ServiceMonitor/PodMonitor/PrometheusRule objects; set prometheus.operator.allowEmptyLabels=true if it selects everything" -}}
{{- end -}}

{{- /* An external Prometheus that should scrape the stack cannot get through our NetworkPolicies. */ -}}
{{- if and $v.networkPolicy.enabled $v.prometheus.operator.enabled (not $v.prometheus.enabled) (not $v.networkPolicy.prometheusScrapeFrom) -}}
{{- fail "prometheus.operator.enabled with prometheus.enabled=false: your own Prometheus must get through the NetworkPolicies to scrape the stack. Set networkPolicy.prometheusScrapeFrom to its peers (e.g. a namespaceSelector for the monitoring namespace), or networkPolicy.enabled=false" -}}
{{- end -}}

{{- /* Resource quantities the API server would reject (e.g. "2GB"): schema types cannot say
which unit was meant, so the message names the value and the two spellings that work. */ -}}
{{- range $path, $res := dict
      "prometheus" $v.prometheus.resources "alertmanager" $v.alertmanager.resources
      "grafana" $v.grafana.resources "elasticsearch" $v.elasticsearch.resources
      "elasticsearch.setup" $v.elasticsearch.setup.resources "kibana" $v.kibana.resources
      "fluentd.daemonset" $v.fluentd.daemonset.resources "fluentd.aggregator" $v.fluentd.aggregator.resources
      "elasticsearchExporter" $v.elasticsearchExporter.resources -}}
{{- range $section := list "requests" "limits" -}}
{{- range $resource, $q := (get $res $section | default dict) -}}
{{- if not (regexMatch "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$" (toString $q)) -}}
{{- $num := regexFind "^[0-9.]+" (toString $q) | default "2" -}}
{{- $fix := printf "write %sGi (binary, 1Gi = 1024^3 bytes) or %sG (decimal)" $num $num -}}
{{- if eq $resource "cpu" }}{{ $fix = "write cores, e.g. 500m or 2" }}{{ end -}}
{{- fail (printf "%s.resources.%s.%s is %q, which is not a Kubernetes quantity (the API server would reject the pod): %s" $path $section $resource (toString $q) $fix) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Prometheus's size-based retention must fit its volume, or the disk fills before it deletes. */ -}}
{{- if and $v.prometheus.enabled $v.prometheus.persistence.enabled $v.prometheus.retentionSize -}}
{{- $keep := include "rpcscope-stack.sizeBytes" (dict "value" $v.prometheus.retentionSize "kind" "prometheus") | float64 -}}
{{- $pvc := include "rpcscope-stack.sizeBytes" (dict "value" $v.prometheus.persistence.size "kind" "quantity") | float64 -}}
{{- if ge $keep $pvc -}}
{{- fail (printf "prometheus.retentionSize (%s) does not fit prometheus.persistence.size (%s): the volume fills before Prometheus deletes old blocks (the WAL needs room too). Lower prometheus.retentionSize to about 80%% of the volume, or raise prometheus.persistence.size" $v.prometheus.retentionSize (toString $v.prometheus.persistence.size)) -}}
{{- end -}}
{{- end -}}

{{- /* An exposed UI behind default-deny NetworkPolicies needs the controller's peers. */ -}}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.ingressController.from) -}}
{{- range $c := list "grafana" "prometheus" "alertmanager" "kibana" -}}
{{- if include "rpcscope-stack.exposure.enabled" (dict "ctx" $ "component" $c) -}}
{{- fail (printf "%s.ingress or %s.httpRoute is enabled, but the NetworkPolicies would block your Ingress controller or Gateway (every request a 502/504): set networkPolicy.ingressController.from to its peers, e.g. [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}], or networkPolicy.enabled=false" $c $c) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Prometheus timeouts: a timeout longer than the interval is rejected by Prometheus at start. */ -}}
{{- if $v.prometheus.enabled -}}
{{- $i := include "rpcscope-stack.durationSeconds" $v.prometheus.scrapeInterval | float64 -}}
{{- $t := include "rpcscope-stack.durationSeconds" $v.prometheus.scrapeTimeout | float64 -}}
{{- if gt $t $i -}}
{{- fail (printf "prometheus.scrapeTimeout (%s) is longer than prometheus.scrapeInterval (%s): Prometheus refuses to start. Lower prometheus.scrapeTimeout" $v.prometheus.scrapeTimeout $v.prometheus.scrapeInterval) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.validate.route: every `receiver` in the route tree names a defined receiver.
Args: (dict "route" <route> "names" <list> "path" "<values path>")
*/}}
{{- define "rpcscope-stack.validate.route" -}}
{{- $names := .names -}}
{{- $path := .path -}}
{{- with .route.receiver -}}
{{- if not (has . $names) -}}
{{- fail (printf "%s.receiver is %q, which is not defined: add it to alertmanager.receivers or use one of %s" $path . (join ", " $names)) -}}
{{- end -}}
{{- end -}}
{{- range $i, $r := .route.routes -}}
{{- include "rpcscope-stack.validate.route" (dict "route" $r "names" $names "path" (printf "%s.routes[%d]" $path $i)) -}}
{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.durationSeconds: a Prometheus duration ("1m30s", "15s", "500ms") in seconds.
*/}}
{{- define "rpcscope-stack.durationSeconds" -}}
{{- $total := 0.0 -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 "w" 604800.0 "y" 31536000.0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w|y)" . -1 -}}
{{- $unit := regexFind "(ms|s|m|h|d|w|y)$" . -}}
{{- $n := trimSuffix $unit . | float64 -}}
{{- $total = addf $total (mulf $n (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
rpcscope-stack.sizeBytes: a size in bytes (as a float string), for comparisons in validation.
Args: (dict "value" "10Gi" "kind" "quantity|prometheus|fluentd|jvm")
  quantity:   Kubernetes quantity (Ki..Ei binary, k..E decimal)
  prometheus: --storage.tsdb.retention.size units (B, KB, MB, ... powers of 1024)
  fluentd:    Fluentd size (k, m, g, t, optional b; powers of 1024)
  jvm:        -Xmx size (k, m, g; powers of 1024)
*/}}
{{- define "rpcscope-stack.sizeBytes" -}}
{{- $s := toString .value -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $s | default "0" | float64 -}}
{{- $unit := trimPrefix (regexFind "^[0-9]+(\\.[0-9]+)?" $s) $s -}}
{{- $bin := dict "" 1.0 "k" 1024.0 "m" 1048576.0 "g" 1073741824.0 "t" 1099511627776.0 "p" 1125899906842624.0 "e" 1152921504606846976.0 -}}
{{- $mult := 1.0 -}}
{{- if eq .kind "quantity" -}}
{{- $mult = get (dict "" 1.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18) $unit | default 1.0 -}}
{{- else -}}
{{- $mult = get $bin (lower (trimSuffix "b" (trimSuffix "B" $unit))) | default 1.0 -}}
{{- end -}}
{{- mulf $num $mult -}}
{{- end -}}
