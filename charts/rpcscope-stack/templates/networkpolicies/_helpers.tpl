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
