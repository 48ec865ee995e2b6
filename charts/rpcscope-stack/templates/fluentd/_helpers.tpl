{{/*
Shared pieces of the two Fluentd workloads. Both run the same files from fluentd-config/
(copied to files/fluentd/ by tools/generate.py), with different entry files and environment.
The image's entrypoint script is bypassed: it rewrites FLUENT_CONTAINER_TAIL_EXCLUDE_PATH in a
format our config does not use, and it passes --gemfile; plain `fluentd -c` with the image's
GEM_PATH loads the same plugins.
*/}}

{{/* The ConfigMap items: key (no "/") -> path under the mount. Args: $ */}}
{{- define "rpcscope-stack.fluentd.configItems" -}}
{{- range $path, $_ := .Files.Glob "files/fluentd/**.conf" }}
- key: {{ trimPrefix "files/fluentd/" $path | replace "/" "__" }}
  path: {{ trimPrefix "files/fluentd/" $path }}
{{- end }}
{{- end -}}

{{/* Environment shared by both roles. Args: (dict "ctx" $ "role" "daemonset|aggregator") */}}
{{- define "rpcscope-stack.fluentd.env" -}}
{{- $ctx := .ctx -}}
{{- $f := $ctx.Values.fluentd -}}
{{- $section := index $f .role }}
- name: FLUENT_ELASTICSEARCH_HOSTS
  value: {{ include "rpcscope-stack.elasticsearchUrl" $ctx | quote }}
- name: FLUENT_ELASTICSEARCH_USER_FILE
  value: /etc/fluent/elasticsearch-credentials/username
- name: FLUENT_ELASTICSEARCH_PASSWORD_FILE
  value: /etc/fluent/elasticsearch-credentials/password
- name: FLUENT_ELASTICSEARCH_CA_FILE
  value: {{ include "rpcscope-stack.logs.esCaFile" (dict "ctx" $ctx "dir" "/etc/fluent/elasticsearch-ca") | quote }}
- name: FLUENT_DATA_STREAM_NAMESPACE
  value: {{ $f.dataStreamNamespace | quote }}
- name: FLUENT_LOG_LEVEL
  value: {{ $f.logLevel | quote }}
- name: FLUENT_STATE_PATH
  value: /var/lib/fluentd
- name: FLUENT_BUFFER_TOTAL_LIMIT_SIZE
  value: {{ $section.bufferTotalLimitSize | quote }}
- name: FLUENT_PROMETHEUS_PORT
  value: "24231"
{{- end -}}

{{/* Volumes shared by both roles. Args: $ */}}
{{- define "rpcscope-stack.fluentd.volumes" -}}
- name: config
  configMap:
    name: {{ include "rpcscope-stack.componentName" (dict "ctx" . "component" "fluentd") }}-config
    items:
      {{- include "rpcscope-stack.fluentd.configItems" . | nindent 6 }}
- name: elasticsearch-credentials
  secret:
    secretName: {{ include "rpcscope-stack.logs.esCredentialsSecret" (dict "ctx" . "client" "fluentd") }}
    items:
      - key: username
        path: username
      - key: password
        path: password
{{- include "rpcscope-stack.logs.esCaVolume" (dict "ctx" . "part" "volume") }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{/* Mounts shared by both roles. Args: $ */}}
{{- define "rpcscope-stack.fluentd.volumeMounts" -}}
- name: config
  mountPath: /fluentd/etc/rpcscope
  readOnly: true
- name: elasticsearch-credentials
  mountPath: /etc/fluent/elasticsearch-credentials
  readOnly: true
{{- include "rpcscope-stack.logs.esCaVolume" (dict "ctx" . "part" "mount" "path" "/etc/fluent/elasticsearch-ca") }}
- name: state
  mountPath: /var/lib/fluentd
- name: tmp
  mountPath: /tmp
{{- end -}}
