{{/*
rpcscope-stack.grafana.iniValues: grafana.ini as JSON {section: {key: value}}: hardened defaults
(no sign-up, no anonymous access, no phone-home, no plugin downloads unless `grafana.plugins`
names some), then `grafana.plugins` and `grafana.oidc`, then `grafana.grafana.ini` over all.
The NetworkPolicy derives Grafana's egress ports from the same dict.
rpcscope-stack.grafana.ini renders it as the ini file.
*/}}
{{- define "rpcscope-stack.grafana.iniValues" -}}
{{- $g := .Values.grafana -}}
{{- $defaults := dict
  "server" (dict "http_port" "3000")
  "paths" (dict "data" "/var/lib/grafana" "logs" "/var/lib/grafana/log" "plugins" "/var/lib/grafana/plugins" "provisioning" "/etc/grafana/provisioning")
  "log" (dict "mode" "console")
  "analytics" (dict "reporting_enabled" "false" "check_for_updates" "false" "check_for_plugin_updates" "false" "feedback_links_enabled" "false")
  "news" (dict "news_feed_enabled" "false")
  "plugins" (dict "preinstall_disabled" "true")
  "security" (dict "disable_gravatar" "true" "cookie_samesite" "strict" "disable_brute_force_login_protection" "false")
  "users" (dict "allow_sign_up" "false" "allow_org_create" "false")
  "auth.anonymous" (dict "enabled" "false")
-}}
{{- with $g.plugins }}
{{- $_ := set $defaults "plugins" (dict "preinstall_disabled" "false" "preinstall" (join "," .)) }}
{{- end }}
{{- if $g.oidc.enabled }}
{{- $o := $g.oidc }}
{{- $_ := set $defaults "auth.generic_oauth" (dict
      "enabled" "true" "name" $o.name "client_id" $o.clientId
      "client_secret" (printf "$__file{/etc/grafana/secrets/oidc/%s}" $o.clientSecret.key)
      "auth_url" $o.authUrl "token_url" $o.tokenUrl "api_url" $o.apiUrl "scopes" $o.scopes
      "allow_sign_up" (toString $o.allowSignUp) "use_pkce" "true") }}
{{- with $o.roleAttributePath }}
{{- $_ := set (get $defaults "auth.generic_oauth") "role_attribute_path" . }}
{{- end }}
{{- end }}
{{- toJson (mergeOverwrite $defaults (deepCopy (index $g "grafana.ini"))) -}}
{{- end -}}

{{- define "rpcscope-stack.grafana.ini" -}}
{{- $ini := include "rpcscope-stack.grafana.iniValues" . | fromJson -}}
{{- range $section := keys $ini | sortAlpha }}
[{{ $section }}]
{{- $kv := index $ini $section }}
{{- range $k := keys $kv | sortAlpha }}
{{ $k }} = {{ index $kv $k }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
rpcscope-stack.grafana.esSecrets: where Grafana reads Elasticsearch credentials and CA from, as
JSON {"credentials": "<Secret name>", "ca": "<Secret name or empty>"}.
In-chart Elasticsearch: the read-only `rpcscope_grafana` user the setup Job creates, in
`<fullname>-grafana-elasticsearch-credentials` (keys `username`, `password`), and `<es>-tls`
(key `ca.crt`). Grafana never gets the `elastic` superuser. External:
`elasticsearch.external.readerCredentialsSecret` (a read-only user; the writer in
`.credentialsSecret` cannot read) / `.caSecret`.
*/}}
{{- define "rpcscope-stack.grafana.esSecrets" -}}
{{- if .Values.elasticsearch.enabled -}}
{{- toJson (dict "credentials" (include "rpcscope-stack.logs.userSecret" (dict "ctx" . "client" "grafana-elasticsearch")) "ca" (include "rpcscope-stack.logs.esTlsSecret" .)) -}}
{{- else -}}
{{- toJson (dict "credentials" .Values.elasticsearch.external.readerCredentialsSecret "ca" .Values.elasticsearch.external.caSecret) -}}
{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.grafana.esEnabled: "true" when the Elasticsearch datasource is provisioned.
*/}}
{{- define "rpcscope-stack.grafana.esEnabled" -}}
{{- if and .Values.grafana.datasources.elasticsearch.enabled (or .Values.elasticsearch.enabled .Values.elasticsearch.external.url) -}}true{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.grafana.datasources: provisioned datasources. Credentials are never written here:
`$__file{...}` makes Grafana read them from the mounted Secrets at start-up.
*/}}
{{- define "rpcscope-stack.grafana.datasources" -}}
{{- $ds := .Values.grafana.datasources -}}
apiVersion: 1
datasources:
  - name: Prometheus
    uid: prometheus
    type: prometheus
    access: proxy
    url: {{ include "rpcscope-stack.prometheusUrl" . | quote }}
    isDefault: true
    editable: false
    jsonData:
      timeInterval: {{ .Values.prometheus.scrapeInterval | quote }}
      httpMethod: POST
      {{- /* Metrics to logs: rpcscope's histogram exemplars carry trace_id; each destination
      below becomes a link on an exemplar dot (the logs of that one call). */}}
      {{- $links := include "rpcscope-stack.alerting.links" . | fromJson }}
      exemplarTraceIdDestinations:
        {{- if include "rpcscope-stack.grafana.esEnabled" . }}
        - name: trace_id
          datasourceUid: elasticsearch
          urlDisplayLabel: Logs of this call
        {{- end }}
        - name: trace_id
          url: {{ printf "%s/app/discover#/?_g=(time:(from:now-1h,to:now))&_a=(dataSource:(dataViewId:'rpcscope-logs',type:dataView),query:(language:kuery,query:'%s:%%22${__value.raw}%%22'))" $links.kibanaUrl $ds.elasticsearch.traceIdField | quote }}
          urlDisplayLabel: Logs of this call in Kibana
{{- if or .Values.alertmanager.enabled .Values.alertmanager.external.url }}
  - name: Alertmanager
    uid: alertmanager
    type: alertmanager
    access: proxy
    url: {{ include "rpcscope-stack.alertmanagerUrl" . | quote }}
    editable: false
    jsonData:
      implementation: prometheus
      handleGrafanaManagedAlerts: false
{{- end }}
{{- if include "rpcscope-stack.grafana.esEnabled" . }}
{{- $sec := include "rpcscope-stack.grafana.esSecrets" . | fromJson }}
  - name: Elasticsearch logs
    uid: elasticsearch
    type: elasticsearch
    access: proxy
    url: {{ include "rpcscope-stack.elasticsearchUrl" . | quote }}
    editable: false
    {{- if $sec.credentials }}
    basicAuth: true
    basicAuthUser: $__file{/etc/grafana/secrets/elasticsearch/username}
    {{- end }}
    jsonData:
      index: {{ $ds.elasticsearch.index | quote }}
      timeField: {{ $ds.elasticsearch.timeField | quote }}
      logMessageField: message
      logLevelField: log.level
      {{- if $sec.ca }}
      tlsAuthWithCACert: true
      {{- end }}
      # Every log line with a trace id links to all log lines of that trace.
      dataLinks:
        - field: {{ $ds.elasticsearch.traceIdField | quote }}
          datasourceUid: elasticsearch
          url: {{ printf "%s:\"${__value.raw}\"" $ds.elasticsearch.traceIdField | quote }}
    {{- if or $sec.credentials $sec.ca }}
    secureJsonData:
      {{- if $sec.credentials }}
      basicAuthPassword: $__file{/etc/grafana/secrets/elasticsearch/password}
      {{- end }}
      {{- if $sec.ca }}
      tlsCACert: $__file{/etc/grafana/secrets/elasticsearch-ca/ca.crt}
      {{- end }}
    {{- end }}
{{- end }}
{{- with $ds.extra }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
rpcscope-stack.grafana.dashboardConfigMapName: ConfigMap name for one dashboard file.
Args: (dict "ctx" $ "file" "files/dashboards/x.json")
*/}}
{{- define "rpcscope-stack.grafana.dashboardConfigMapName" -}}
{{- $base := base .file | trimSuffix ".json" | lower | replace "_" "-" | replace "." "-" -}}
{{- /* Readable prefix, truncated, plus a hash of the file name so two long names never collide. */ -}}
{{- $prefix := printf "%s-dash-%s" (include "rpcscope-stack.componentName" (dict "ctx" .ctx "component" "grafana")) $base | trunc 54 | trimSuffix "-" -}}
{{- printf "%s-%s" $prefix (base .file | sha256sum | trunc 8) -}}
{{- end -}}
