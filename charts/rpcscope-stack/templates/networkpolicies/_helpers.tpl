{{/*
NetworkPolicy building blocks. The whole graph lives in this folder:

  default-deny.yaml       every pod of this release: no ingress, no egress
  <component>.yaml        exactly the flows that component needs, both directions

Peers inside the release are matched on the selector labels (name, instance, component), so a
flow from "kibana" can only come from this release's Kibana pods. tests/chart/test_networkpolicy.py
evaluates the rendered policies and asserts the resulting graph equals its table.
*/}}

{{/* A peer matching one component of this release (same namespace). Args: (dict "ctx" $ "component" "x") */}}
{{- define "rpcscope-stack.np.peer" -}}
- podSelector:
    matchLabels:
      {{- include "rpcscope-stack.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* Egress to cluster DNS on 53/UDP+TCP. Args: $ */}}
{{- define "rpcscope-stack.np.dnsEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.to | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}

{{/* Egress to the Kubernetes API server. Args: $ */}}
{{- define "rpcscope-stack.np.kubeApiEgress" -}}
- {{- with .Values.networkPolicy.kubeApi.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- range .Values.networkPolicy.kubeApi.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end -}}

{{/*
Egress to an external endpoint given by URL (external mode): TCP to the URL's port, towards
`networkPolicy.external.to` (any destination when empty). Args: (dict "ctx" $ "url" "https://...")
*/}}
{{- define "rpcscope-stack.np.externalEgress" -}}
- {{- with .ctx.Values.networkPolicy.external.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - protocol: TCP
      port: {{ include "rpcscope-stack.urlPort" .url }}
{{- end -}}

{{/*
Egress to Elasticsearch: the in-chart Service on 9200, or the external URL. Args: $
*/}}
{{- define "rpcscope-stack.np.elasticsearchEgress" -}}
{{- if .Values.elasticsearch.enabled -}}
- to:
    {{- include "rpcscope-stack.np.peer" (dict "ctx" . "component" "elasticsearch") | nindent 4 }}
  ports:
    - protocol: TCP
      port: 9200
{{- else if .Values.elasticsearch.external.url -}}
{{- include "rpcscope-stack.np.externalEgress" (dict "ctx" . "url" .Values.elasticsearch.external.url) }}
{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.np.scrapeTargetPorts: the ports of every target in prometheus.extraScrapeConfigs'
static_configs ("host:port", or the scheme's default port), as a JSON list of unique integers.
Args: $
*/}}
{{- define "rpcscope-stack.np.scrapeTargetPorts" -}}
{{- $ports := list -}}
{{- range .Values.prometheus.extraScrapeConfigs -}}
{{- $default := ternary 443 80 (eq (toString (.scheme | default "http")) "https") -}}
{{- range .static_configs -}}
{{- range .targets -}}
{{- $p := regexFind ":[0-9]+$" (toString .) | trimPrefix ":" -}}
{{- $ports = append $ports (ternary (int $p) $default (ne $p "")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}

{{/*
rpcscope-stack.np.receiverPorts: where Alertmanager connects for notifications:
networkPolicy.alertmanagerReceivers.ports plus the port of every webhook URL and email
smarthost in alertmanager.receivers, as a JSON list. Args: $
*/}}
{{- define "rpcscope-stack.np.receiverPorts" -}}
{{- $ports := list -}}
{{- range .Values.networkPolicy.alertmanagerReceivers.ports }}{{ $ports = append $ports (int .) }}{{ end -}}
{{- range .Values.alertmanager.receivers -}}
{{- with .webhook }}{{ $ports = append $ports (int (include "rpcscope-stack.urlPort" .url)) }}{{ end -}}
{{- with .email }}{{ $ports = append $ports (int (regexFind "[0-9]+$" .smarthost)) }}{{ end -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}

{{/*
rpcscope-stack.np.grafanaExternalPorts: ports Grafana connects to outside the cluster, derived
from grafana.ini (the SMTP server's `smtp.host` port when `smtp.enabled`; for every enabled
`auth.<provider>` section the ports of its auth_url/token_url/api_url, 443 by default) plus
networkPolicy.grafanaEgress.ports, as a JSON list. Args: $
*/}}
{{- define "rpcscope-stack.np.grafanaExternalPorts" -}}
{{- $ini := include "rpcscope-stack.grafana.iniValues" . | fromJson -}}
{{- $ports := list -}}
{{- if .Values.grafana.plugins }}{{ $ports = append $ports 443 }}{{ end -}}
{{- range .Values.networkPolicy.grafanaEgress.ports }}{{ $ports = append $ports (int .) }}{{ end -}}
{{- $smtp := get $ini "smtp" | default dict -}}
{{- if eq (toString (get $smtp "enabled")) "true" -}}
{{- $p := regexFind ":[0-9]+$" (toString (get $smtp "host" | default "")) | trimPrefix ":" -}}
{{- $ports = append $ports (ternary (int $p) 25 (ne $p "")) -}}
{{- end -}}
{{- range $section, $kv := $ini -}}
{{- if and (hasPrefix "auth." $section) (not (has $section (list "auth.anonymous" "auth.basic" "auth.proxy" "auth.jwt"))) (kindIs "map" $kv) (eq (toString (get $kv "enabled")) "true") -}}
{{- $urls := list -}}
{{- range $k := list "auth_url" "token_url" "api_url" }}{{ with get $kv $k }}{{ $urls = append $urls . }}{{ end }}{{ end -}}
{{- if not $urls }}{{ $ports = append $ports 443 }}{{ end -}}
{{- range $urls }}{{ $ports = append $ports (int (include "rpcscope-stack.urlPort" .)) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}

{{/* Peers of the user's instrumented services. Args: $ */}}
{{- define "rpcscope-stack.np.instrumentedPeer" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.instrumentedServices.namespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .Values.networkPolicy.instrumentedServices.podSelector | nindent 4 }}
{{- end -}}

{{/* Metadata for a component's policy. Args: (dict "ctx" $ "component" "x") */}}
{{- define "rpcscope-stack.np.metadata" -}}
metadata:
  name: {{ include "rpcscope-stack.componentName" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "rpcscope-stack.labels" . | nindent 4 }}
{{- end -}}

{{/* Whether the Fluentd aggregator runs (its values section belongs to the log templates). */}}
{{- define "rpcscope-stack.np.aggregatorEnabled" -}}
{{- if and .Values.fluentd.enabled (dig "aggregator" "enabled" true .Values.fluentd) -}}true{{- end -}}
{{- end -}}

{{/*
Peers that scrape the stack's metrics ports: our Prometheus (when enabled) plus
`networkPolicy.prometheusScrapeFrom` (your own Prometheus in external mode). Empty output when
there are none. Args: $
*/}}
{{- define "rpcscope-stack.np.scraperPeers" -}}
{{- if .Values.prometheus.enabled }}
{{ include "rpcscope-stack.np.peer" (dict "ctx" . "component" "prometheus") }}
{{- end }}
{{- with .Values.networkPolicy.prometheusScrapeFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An ingress rule from the scraper peers on one port, or nothing. Args: (dict "ctx" $ "port" 9114) */}}
{{- define "rpcscope-stack.np.scrapeIngress" -}}
{{- $peers := include "rpcscope-stack.np.scraperPeers" .ctx | trim -}}
{{- if $peers -}}
- from:
    {{- $peers | nindent 4 }}
  ports:
    - protocol: TCP
      port: {{ .port }}
{{- end -}}
{{- end -}}
