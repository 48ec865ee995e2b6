{{/*
rpcscope-stack.prometheus.config: prometheus.yml.

Jobs:
- prometheus: itself.
- rpcscope-stack: every metrics endpoint of this release's own components, matched on
  (component label, container port) so nothing depends on annotations the log templates may or
  may not carry.
- kubernetes-pods / kubernetes-services: anything annotated `prometheus.io/scrape: "true"`
  (port from `prometheus.io/port`, path from `prometheus.io/path`), the convention rpcscope's
  /metrics endpoint follows. This release's own pods are dropped there (already scraped above).
The `job` label of annotated targets is the pod's `app.kubernetes.io/name` label, else its `app`
label, else the container name, so dashboards can filter by service.
*/}}
{{- define "rpcscope-stack.prometheus.config" -}}
{{- $ns := .Release.Namespace -}}
{{- $inst := .Release.Name -}}
{{- $name := include "rpcscope-stack.name" . -}}
{{- $p := .Values.prometheus -}}
{{- $stackSelector := printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s" $name $inst -}}
global:
  scrape_interval: {{ $p.scrapeInterval }}
  scrape_timeout: {{ $p.scrapeTimeout }}
  evaluation_interval: {{ $p.evaluationInterval }}
  {{- with $p.externalLabels }}
  external_labels:
    {{- toYaml . | nindent 4 }}
  {{- end }}
rule_files:
  - /etc/prometheus/rules/*.yaml
{{- if .Values.alertmanager.enabled }}
alerting:
  alertmanagers:
    - kubernetes_sd_configs:
        - role: pod
          namespaces:
            names: [{{ $ns | quote }}]
          selectors:
            - role: pod
              label: {{ printf "%s,app.kubernetes.io/component=alertmanager" $stackSelector | quote }}
      relabel_configs:
        - source_labels: [__meta_kubernetes_pod_container_port_number]
          regex: "9093"
          action: keep
{{- else if .Values.alertmanager.external.url }}
{{- $u := urlParse .Values.alertmanager.external.url }}
alerting:
  alertmanagers:
    - scheme: {{ $u.scheme }}
      {{- with $u.path }}
      path_prefix: {{ . | quote }}
      {{- end }}
      static_configs:
        - targets: [{{ include "rpcscope-stack.hostPort" $u | quote }}]
{{- end }}
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
  - job_name: rpcscope-stack
    kubernetes_sd_configs:
      - role: pod
        namespaces:
          names: [{{ $ns | quote }}]
        selectors:
          - role: pod
            label: {{ $stackSelector | quote }}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Pending|Succeeded|Failed
        action: drop
      # The metrics endpoint of each stack component, by its agreed port.
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_component, __meta_kubernetes_pod_container_port_number]
        separator: ":"
        regex: "alertmanager:9093|grafana:3000|fluentd:24231|fluentd-aggregator:24231|elasticsearch-exporter:9114"
        action: keep
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
        target_label: job
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_node_name]
        target_label: node
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
        {{- with $p.discovery.namespaces }}
        namespaces:
          names: {{ toJson . }}
        {{- end }}
    relabel_configs:
      {{- include "rpcscope-stack.prometheus.annotationRelabel" (dict "ctx" . "role" "pod") | nindent 6 }}
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Pending|Succeeded|Failed
        action: drop
      - source_labels: [__meta_kubernetes_pod_container_name]
        target_label: job
      - source_labels: [__meta_kubernetes_pod_label_app]
        regex: (.+)
        target_label: job
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]
        regex: (.+)
        target_label: job
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_node_name]
        target_label: node
  - job_name: kubernetes-services
    kubernetes_sd_configs:
      - role: endpointslice
        {{- with $p.discovery.namespaces }}
        namespaces:
          names: {{ toJson . }}
        {{- end }}
    relabel_configs:
      {{- include "rpcscope-stack.prometheus.annotationRelabel" (dict "ctx" . "role" "service") | nindent 6 }}
      - source_labels: [__meta_kubernetes_service_name]
        target_label: job
      - source_labels: [__meta_kubernetes_service_label_app_kubernetes_io_name]
        regex: (.+)
        target_label: job
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_service_name]
        target_label: service
{{- with $p.extraScrapeConfigs }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $p.remoteWrite }}
remote_write:
  {{- range . }}
  - url: {{ .url | quote }}
    {{- with .name }}
    name: {{ . | quote }}
    {{- end }}
    {{- with .basicAuth }}
    basic_auth:
      username: {{ .username | quote }}
      password_file: {{ include "rpcscope-stack.prometheus.secretFile" .passwordSecret | quote }}
    {{- end }}
    {{- with .bearerTokenSecret }}
    authorization:
      type: Bearer
      credentials_file: {{ include "rpcscope-stack.prometheus.secretFile" . | quote }}
    {{- end }}
    {{- with .headers }}
    headers:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .caSecret }}
    tls_config:
      ca_file: {{ include "rpcscope-stack.prometheus.secretFile" . | quote }}
    {{- end }}
    {{- with .writeRelabelConfigs }}
    write_relabel_configs:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .queueConfig }}
    queue_config:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
rpcscope-stack.prometheus.secretNames: every Secret prometheus.remoteWrite references, as a JSON
list; each is mounted read-only at /etc/prometheus/secrets/<secretName>/ and named through
Prometheus's *_file fields, so no credential is in values, the ConfigMap or the release.
*/}}
{{- define "rpcscope-stack.prometheus.secretNames" -}}
{{- $names := list -}}
{{- range .Values.prometheus.remoteWrite -}}
{{- with .basicAuth }}{{ $names = append $names .passwordSecret.secretName }}{{ end -}}
{{- with .bearerTokenSecret }}{{ $names = append $names .secretName }}{{ end -}}
{{- with .caSecret }}{{ $names = append $names .secretName }}{{ end -}}
{{- end -}}
{{- toJson (uniq $names) -}}
{{- end -}}

{{- define "rpcscope-stack.prometheus.secretFile" -}}
{{- printf "/etc/prometheus/secrets/%s/%s" .secretName .key -}}
{{- end -}}

{{/*
rpcscope-stack.prometheus.annotationRelabel: keep targets annotated `prometheus.io/scrape: "true"`,
drop this release's own pods (scraped by the rpcscope-stack job), and take the port and path from
`prometheus.io/port` / `prometheus.io/path`. Annotation names live in
rpcscope.schema (SCRAPE_ANNOTATION, PORT_ANNOTATION, PATH_ANNOTATION); Prometheus exposes
`prometheus.io/scrape` as `__meta_kubernetes_<role>_annotation_prometheus_io_scrape`, and
tests/chart asserts the two agree.
Args: (dict "ctx" $ "role" "pod"|"service")
*/}}
{{- define "rpcscope-stack.prometheus.annotationRelabel" -}}
{{- $r := .role -}}
- source_labels: [__meta_kubernetes_{{ $r }}_annotation_prometheus_io_scrape]
  regex: "true"
  action: keep
- source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name, __meta_kubernetes_pod_label_app_kubernetes_io_instance]
  separator: ";"
  regex: {{ printf "%s;%s" (include "rpcscope-stack.name" .ctx) .ctx.Release.Name | quote }}
  action: drop
- source_labels: [__meta_kubernetes_{{ $r }}_annotation_prometheus_io_path]
  regex: (.+)
  target_label: __metrics_path__
# IPv4 address + annotated port
- source_labels: [__address__, __meta_kubernetes_{{ $r }}_annotation_prometheus_io_port]
  regex: '([^:\[\]]+)(?::\d+)?;(\d+)'
  replacement: $1:$2
  target_label: __address__
# IPv6 address + annotated port
- source_labels: [__address__, __meta_kubernetes_{{ $r }}_annotation_prometheus_io_port]
  regex: '\[([0-9a-fA-F:]+)\](?::\d+)?;(\d+)'
  replacement: '[$1]:$2'
  target_label: __address__
{{- end -}}

{{/*
rpcscope-stack.hostPort: "host:port" of a parsed URL (urlParse result), with the scheme's default
port when the URL has none.
*/}}
{{- define "rpcscope-stack.hostPort" -}}
{{- $host := .host -}}
{{- if regexMatch ":[0-9]+$" $host -}}
{{- $host -}}
{{- else if eq .scheme "https" -}}
{{- printf "%s:443" $host -}}
{{- else -}}
{{- printf "%s:80" $host -}}
{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.urlPort: the port number of a URL (explicit, or the scheme default).
Args: the URL string.
*/}}
{{- define "rpcscope-stack.urlPort" -}}
{{- $u := urlParse . -}}
{{- $hp := include "rpcscope-stack.hostPort" $u -}}
{{- regexFind "[0-9]+$" $hp -}}
{{- end -}}
