{{/*
Helpers for the log side (Elasticsearch, Kibana, Fluentd, elasticsearch-exporter).

How the log components authenticate to Elasticsearch (least privilege, one user per client):

  client                   in-chart Elasticsearch                          external Elasticsearch
  Fluentd (both roles)     rpcscope_fluentd  <fullname>-fluentd-credentials    elasticsearch.external.credentialsSecret
  elasticsearch-exporter   rpcscope_monitor  <fullname>-elasticsearch-exporter-credentials   (same)
  Kibana                   kibana_system     <fullname>-kibana-credentials     kibana.elasticsearchCredentialsSecret (required)
  Grafana log datasource   rpcscope_grafana  <fullname>-grafana-elasticsearch-credentials (read-only)
                                                                             elasticsearch.external.readerCredentialsSecret (required)
  setup Job                elastic           <fullname>-elasticsearch-credentials   (no setup Job)

Every credentials Secret has the keys `username` and `password`. The CA every client verifies
Elasticsearch with is `ca.crt` in <fullname>-elasticsearch-tls (in-chart) or in
elasticsearch.external.caSecret (external; empty means the image's system trust store).
*/}}

{{/* Name of a log component's object. Args: (dict "ctx" $ "component" "x") */}}
{{- define "rpcscope-stack.logs.name" -}}
{{- include "rpcscope-stack.componentName" . -}}
{{- end -}}

{{/* The Secret (keys username/password) a client uses for Elasticsearch. Args: (dict "ctx" $ "client" "fluentd|elasticsearch-exporter|kibana") */}}
{{- define "rpcscope-stack.logs.esCredentialsSecret" -}}
{{- $v := .ctx.Values -}}
{{- if and (eq .client "kibana") $v.kibana.elasticsearchCredentialsSecret -}}
{{- $v.kibana.elasticsearchCredentialsSecret -}}
{{- else if $v.elasticsearch.enabled -}}
{{- include "rpcscope-stack.logs.userSecret" . -}}
{{- else -}}
{{- $v.elasticsearch.external.credentialsSecret -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding Elasticsearch's CA (key ca.crt), or "" for the system trust store. Args: $ */}}
{{- define "rpcscope-stack.logs.esCaSecret" -}}
{{- if .Values.elasticsearch.enabled -}}
{{- include "rpcscope-stack.logs.esTlsSecret" . -}}
{{- else -}}
{{- .Values.elasticsearch.external.caSecret -}}
{{- end -}}
{{- end -}}

{{/*
The Secret (keys username/password) of a user the setup Job creates in the in-chart
Elasticsearch: elasticsearch.auth.userSecrets.<key> when set (GitOps: nothing generated), else
the generated `<componentName>-credentials`.
Args: (dict "ctx" $ "client" "fluentd|elasticsearch-exporter|kibana|grafana-elasticsearch")
*/}}
{{- define "rpcscope-stack.logs.userSecret" -}}
{{- $key := get (dict "fluentd" "fluentd" "elasticsearch-exporter" "elasticsearchExporter" "kibana" "kibana" "grafana-elasticsearch" "grafana") .client -}}
{{- (get .ctx.Values.elasticsearch.auth.userSecrets $key) | default (printf "%s-credentials" (include "rpcscope-stack.componentName" (dict "ctx" .ctx "component" .client))) -}}
{{- end -}}

{{/* The in-chart Elasticsearch's TLS Secret (tls.crt, tls.key, ca.crt): yours or generated. Args: $ */}}
{{- define "rpcscope-stack.logs.esTlsSecret" -}}
{{- .Values.elasticsearch.tls.existingSecret | default (printf "%s-tls" (include "rpcscope-stack.componentName" (dict "ctx" . "component" "elasticsearch"))) -}}
{{- end -}}

{{/* The Secret with the elastic superuser's password (in-chart Elasticsearch). Args: $ */}}
{{- define "rpcscope-stack.logs.elasticSecret" -}}
{{- .Values.elasticsearch.auth.existingSecret | default (printf "%s-credentials" (include "rpcscope-stack.componentName" (dict "ctx" . "component" "elasticsearch"))) -}}
{{- end -}}

{{/*
CA volume + mount for a client pod. Renders a `volumes:` item (`part: volume`) or a
`volumeMounts:` item (`part: mount`) mounting ca.crt at `path`; nothing with the system trust
store. Args: (dict "ctx" $ "part" "volume|mount" "path" "/etc/...")
*/}}
{{- define "rpcscope-stack.logs.esCaVolume" -}}
{{- $secret := include "rpcscope-stack.logs.esCaSecret" .ctx -}}
{{- if $secret -}}
{{- if eq .part "volume" }}
- name: elasticsearch-ca
  secret:
    secretName: {{ $secret }}
    items:
      - key: ca.crt
        path: ca.crt
{{- else }}
- name: elasticsearch-ca
  mountPath: {{ .path }}
  readOnly: true
{{- end }}
{{- end -}}
{{- end -}}

{{/* Path of the CA file inside a client container mounted at `dir`. Args: (dict "ctx" $ "dir" "/etc/...") */}}
{{- define "rpcscope-stack.logs.esCaFile" -}}
{{- if include "rpcscope-stack.logs.esCaSecret" .ctx -}}
{{- printf "%s/ca.crt" .dir -}}
{{- else -}}
/etc/ssl/certs/ca-certificates.crt
{{- end -}}
{{- end -}}

{{/* The pod names of the Elasticsearch StatefulSet, comma-separated. Args: $ */}}
{{- define "rpcscope-stack.logs.esPodNames" -}}
{{- $name := include "rpcscope-stack.componentName" (dict "ctx" . "component" "elasticsearch") -}}
{{- $pods := list -}}
{{- range $i := until (int .Values.elasticsearch.replicas) -}}
{{- $pods = append $pods (printf "%s-%d" $name $i) -}}
{{- end -}}
{{- join "," $pods -}}
{{- end -}}

{{/* Common pod scheduling fields from a values section. Args: the section */}}
{{- define "rpcscope-stack.logs.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Pod securityContext for the Elastic images (Elasticsearch, Kibana). They run with any uid as
long as the primary group is 0 (their files are group-0 owned with group permissions equal to
the owner's, the layout OpenShift relies on), so the chart uses a high uid (10001) instead of the
images' 1000, which is often a real user on hosts. Group 0 grants nothing beyond the image's own
files and the pod's volumes. Written out here because the shared helper cannot express gid 0.
Args: (dict "ctx" $ "override" .Values.<component>.podSecurityContext)
*/}}
{{- define "rpcscope-stack.logs.elasticPodSecurityContext" -}}
{{- $base := dict
      "runAsNonRoot" true
      "runAsUser" 10001
      "runAsGroup" 0
      "fsGroup" 0
      "fsGroupChangePolicy" "OnRootMismatch"
      "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (mergeOverwrite $base (deepCopy (.override | default dict))) -}}
{{- end -}}

{{/* Container securityContext for the Elastic images (see above). Args: (dict "ctx" $ "override" ...) */}}
{{- define "rpcscope-stack.logs.elasticContainerSecurityContext" -}}
{{- $base := dict
      "runAsNonRoot" true
      "runAsUser" 10001
      "runAsGroup" 0
      "readOnlyRootFilesystem" true
      "allowPrivilegeEscalation" false
      "privileged" false
      "capabilities" (dict "drop" (list "ALL"))
      "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (mergeOverwrite $base (deepCopy (.override | default dict))) -}}
{{- end -}}
