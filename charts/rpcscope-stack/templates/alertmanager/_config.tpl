{{/*
rpcscope-stack.alertmanager.secretRefs: every {secretName, key} the receivers reference, as a JSON
list of unique secret names. Each such Secret is mounted read-only at
/etc/alertmanager/secrets/<secretName>/ and referenced through Alertmanager's `*_file` fields,
so no secret value ever appears in values, ConfigMaps or the Helm release.
*/}}
{{- define "rpcscope-stack.alertmanager.secretNames" -}}
{{- $names := list -}}
{{- range .Values.alertmanager.receivers -}}
{{- with .webhook }}{{ with .bearerTokenSecret }}{{ $names = append $names .secretName }}{{ end }}{{ end -}}
{{- with .slack }}{{ $names = append $names .apiUrlSecret.secretName }}{{ end -}}
{{- with .email }}{{ with .authPasswordSecret }}{{ $names = append $names .secretName }}{{ end }}{{ end -}}
{{- with .pagerduty }}{{ $names = append $names .routingKeySecret.secretName }}{{ end -}}
{{- end -}}
{{- toJson (uniq $names) -}}
{{- end -}}

{{- define "rpcscope-stack.alertmanager.secretFile" -}}
{{- printf "/etc/alertmanager/secrets/%s/%s" .secretName .key -}}
{{- end -}}

{{/*
rpcscope-stack.alertmanager.config: alertmanager.yml. The built-in "null" receiver (no
integrations) is always defined and is the default route, so a fresh install notifies nobody
until the operator names a receiver.
*/}}
{{- define "rpcscope-stack.alertmanager.config" -}}
{{- $am := .Values.alertmanager -}}
route:
  receiver: {{ $am.route.receiver | quote }}
  group_by: {{ toJson $am.route.groupBy }}
  group_wait: {{ $am.route.groupWait }}
  group_interval: {{ $am.route.groupInterval }}
  repeat_interval: {{ $am.route.repeatInterval }}
  routes:
    {{- with $am.route.routes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    # Pages and tickets (alerts/ labels every alert critical or warning), after your own routes.
    - matchers: ['severity="critical"']
      receiver: {{ $am.route.pageReceiver | default $am.route.receiver | quote }}
      repeat_interval: {{ $am.route.pageRepeatInterval }}
    - matchers: ['severity="warning"']
      receiver: {{ $am.route.ticketReceiver | default $am.route.receiver | quote }}
      repeat_interval: {{ $am.route.ticketRepeatInterval }}
{{- with $am.inhibitRules }}
inhibit_rules:
  {{- toYaml . | nindent 2 }}
{{- end }}
receivers:
  - name: "null"
{{- range $am.receivers }}
  - name: {{ .name | quote }}
    {{- with .webhook }}
    webhook_configs:
      - url: {{ .url | quote }}
        send_resolved: {{ .sendResolved | default false }}
        {{- with .maxAlerts }}
        max_alerts: {{ . }}
        {{- end }}
        {{- with .bearerTokenSecret }}
        http_config:
          authorization:
            type: Bearer
            credentials_file: {{ include "rpcscope-stack.alertmanager.secretFile" . | quote }}
        {{- end }}
    {{- end }}
    {{- with .slack }}
    slack_configs:
      - api_url_file: {{ include "rpcscope-stack.alertmanager.secretFile" .apiUrlSecret | quote }}
        channel: {{ .channel | quote }}
        send_resolved: {{ .sendResolved | default false }}
        {{- with .title }}
        title: {{ . | quote }}
        {{- end }}
        {{- with .text }}
        text: {{ . | quote }}
        {{- end }}
    {{- end }}
    {{- with .email }}
    email_configs:
      - to: {{ .to | quote }}
        from: {{ .from | quote }}
        smarthost: {{ .smarthost | quote }}
        require_tls: {{ if hasKey . "requireTls" }}{{ .requireTls }}{{ else }}true{{ end }}
        send_resolved: {{ .sendResolved | default false }}
        {{- with .authUsername }}
        auth_username: {{ . | quote }}
        {{- end }}
        {{- with .authPasswordSecret }}
        auth_password_file: {{ include "rpcscope-stack.alertmanager.secretFile" . | quote }}
        {{- end }}
    {{- end }}
    {{- with .pagerduty }}
    pagerduty_configs:
      - routing_key_file: {{ include "rpcscope-stack.alertmanager.secretFile" .routingKeySecret | quote }}
        send_resolved: {{ if hasKey . "sendResolved" }}{{ .sendResolved }}{{ else }}true{{ end }}
        {{- with .severity }}
        severity: {{ . | quote }}
        {{- end }}
    {{- end }}
{{- end }}
{{- end -}}
