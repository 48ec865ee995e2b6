{{/*
Shared helpers for every component of rpcscope-stack.

Every component template calls these with a dict, so one component can never pick up another's
names or labels by accident:

  {{ include "rpcscope-stack.componentName" (dict "ctx" $ "component" "elasticsearch") }}
  {{ include "rpcscope-stack.labels" (dict "ctx" $ "component" "elasticsearch") | nindent 4 }}

Component names (the `app.kubernetes.io/component` label, also used by the NetworkPolicies in
templates/networkpolicies/): prometheus, alertmanager, grafana, elasticsearch, kibana, fluentd
(the DaemonSet), fluentd-aggregator, elasticsearch-exporter.

Secret naming convention: `<componentName>-credentials` and `<componentName>-tls`.
Every namespaced object sets `metadata.namespace: {{ .Release.Namespace }}` (explicit, so rendered
manifests applied with kubectl/GitOps land in the release namespace, and scanners do not flag
"default namespace").

Generated secrets and certificates: use `rpcscope-stack.generatedSecretValue` and
`rpcscope-stack.tlsCert` below. They reuse the release's existing Secrets on upgrade and cache
values for the duration of one render, so two templates asking for the same secret agree.
*/}}

{{/*
rpcscope-stack.name: the chart name. It is also the value of `app.kubernetes.io/name` on every
object, so NetworkPolicies and Services can select "anything of this stack" by one label.
*/}}
{{- define "rpcscope-stack.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
rpcscope-stack.fullname: the prefix of every object name.
- `fullnameOverride` wins when set;
- otherwise the release name, with "-rpcscope-stack" appended unless the release name already
  contains the chart name (so `helm install rpcscope-stack ...` does not give
  "rpcscope-stack-rpcscope-stack").
Truncated to 63 characters (the DNS-1123 label limit for Service names) with any trailing "-"
removed. Keep release names short: StatefulSet pods add "-<ordinal>" and a controller-revision
hash label, so component names above ~52 characters break StatefulSets (helm fails loudly).
*/}}
{{- define "rpcscope-stack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := .Chart.Name -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.componentName: `<fullname>-<component>`, truncated to 63 characters.
Args: (dict "ctx" $ "component" "<component>")
*/}}
{{- define "rpcscope-stack.componentName" -}}
{{- printf "%s-%s" (include "rpcscope-stack.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
rpcscope-stack.chart: the `helm.sh/chart` label value.
*/}}
{{- define "rpcscope-stack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
rpcscope-stack.selectorLabels: the immutable labels a workload selects its pods by, and the labels
NetworkPolicies match on. Never add anything here that can change between releases: Deployment
and StatefulSet selectors cannot be edited after creation.
Args: (dict "ctx" $ "component" "<component>")
*/}}
{{- define "rpcscope-stack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rpcscope-stack.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
rpcscope-stack.labels: selector labels plus the standard descriptive labels, for every object's
metadata and for pod templates.
Args: (dict "ctx" $ "component" "<component>")
*/}}
{{- define "rpcscope-stack.labels" -}}
{{ include "rpcscope-stack.selectorLabels" . }}
app.kubernetes.io/part-of: rpcscope
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "rpcscope-stack.chart" .ctx }}
{{- end -}}

{{/*
rpcscope-stack.podLabels: the labels of a workload's pod template. Selector labels plus only
what never changes with a chart or app version: `helm.sh/chart` and `app.kubernetes.io/version`
are left out, because any change to a pod template restarts the pods, and a chart bump alone
must not restart every workload. `extra` (a component's `podLabels` value) is added; it cannot
override the selector labels.
Args: (dict "ctx" $ "component" "<component>" "extra" .Values.<component>.podLabels)
*/}}
{{- define "rpcscope-stack.podLabels" -}}
{{- $fixed := include "rpcscope-stack.selectorLabels" . | fromYaml -}}
{{- $_ := set $fixed "app.kubernetes.io/part-of" "rpcscope" -}}
{{- $_ := set $fixed "app.kubernetes.io/managed-by" .ctx.Release.Service -}}
{{- toYaml (merge $fixed (deepCopy (.extra | default dict))) -}}
{{- end -}}

{{/*
rpcscope-stack.podSpecExtras: the pod-spec fields every component takes from its values section
(render with nindent 6 right after automountServiceAccountToken): priorityClassName and
topologySpreadConstraints. Args: the component's values section.
*/}}
{{- define "rpcscope-stack.podSpecExtras" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
rpcscope-stack.configChecksum: the checksum/config annotation value of a ConfigMap template: a
hash of its `data` only, so labels that carry the chart version do not restart pods.
Args: (dict "ctx" $ "template" "/kibana/configmap.yaml")
*/}}
{{- define "rpcscope-stack.configChecksum" -}}
{{- $doc := include (print .ctx.Template.BasePath .template) .ctx | fromYaml -}}
{{- get $doc "data" | toJson | sha256sum -}}
{{- end -}}

{{/*
rpcscope-stack.image: the full image reference.
Args: (dict "ctx" $ "image" .Values.<component>.image)
The image map is {registry?, repository, tag, digest?}. `global.imageRegistry`, when set,
replaces `registry` (for mirrors and air-gapped installs). A digest, when set, pins the image
and is appended after the tag (the tag stays for humans; the runtime uses the digest).
*/}}
{{- define "rpcscope-stack.image" -}}
{{- $registry := .image.registry | default "" -}}
{{- if .ctx.Values.global.imageRegistry -}}
{{- $registry = .ctx.Values.global.imageRegistry -}}
{{- end -}}
{{- $ref := .image.repository -}}
{{- if $registry -}}
{{- $ref = printf "%s/%s" (trimSuffix "/" $registry) .image.repository -}}
{{- end -}}
{{- if .image.tag -}}
{{- $ref = printf "%s:%s" $ref (toString .image.tag) -}}
{{- end -}}
{{- if .image.digest -}}
{{- $ref = printf "%s@%s" $ref .image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/*
rpcscope-stack.imagePullSecrets: the pod-spec `imagePullSecrets:` block from
`global.imagePullSecrets` (a list of Secret names), or nothing.
Args: $ (the root context)
*/}}
{{- define "rpcscope-stack.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
rpcscope-stack.storageClass: the `storageClassName:` line for a PVC spec, or nothing (cluster
default). The component's own storageClass wins over `global.storageClass`; "-" means the empty
string (disable dynamic provisioning).
Args: (dict "ctx" $ "storageClass" .Values.<component>.persistence.storageClass)
*/}}
{{- define "rpcscope-stack.storageClass" -}}
{{- $sc := .storageClass | default .ctx.Values.global.storageClass -}}
{{- if eq $sc "-" }}
storageClassName: ""
{{- else if $sc }}
storageClassName: {{ $sc | quote }}
{{- end }}
{{- end -}}

{{/*
rpcscope-stack.podSecurityContext: a pod-level securityContext (render under `securityContext:`
with nindent). Non-root, seccomp RuntimeDefault, fsGroup so mounted volumes are writable.
Args: (dict "ctx" $ "runAsUser" 65534 "fsGroup" 65534 "override" .Values.<component>.podSecurityContext)
`runAsUser` defaults to 65534 (nobody); pass the uid the upstream image is built for.
`runAsGroup` and `fsGroup` default to runAsUser. `override` (optional map) is merged last, so
users can adapt to platforms such as OpenShift that assign uids.
*/}}
{{- define "rpcscope-stack.podSecurityContext" -}}
{{- $uid := .runAsUser | default 65534 -}}
{{- $gid := .runAsGroup | default $uid -}}
{{- $base := dict
      "runAsNonRoot" true
      "runAsUser" $uid
      "runAsGroup" $gid
      "fsGroup" (.fsGroup | default $gid)
      "fsGroupChangePolicy" "OnRootMismatch"
      "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (mergeOverwrite $base (deepCopy (.override | default dict))) -}}
{{- end -}}

{{/*
rpcscope-stack.containerSecurityContext: a container-level securityContext (render under
`securityContext:` with nindent): non-root, read-only root filesystem, no privilege escalation,
every capability dropped, seccomp RuntimeDefault.
Args: (dict "ctx" $ "runAsUser" 65534 "override" .Values.<component>.containerSecurityContext)
*/}}
{{- define "rpcscope-stack.containerSecurityContext" -}}
{{- $uid := .runAsUser | default 65534 -}}
{{- $base := dict
      "runAsNonRoot" true
      "runAsUser" $uid
      "runAsGroup" (.runAsGroup | default $uid)
      "readOnlyRootFilesystem" true
      "allowPrivilegeEscalation" false
      "privileged" false
      "capabilities" (dict "drop" (list "ALL"))
      "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (mergeOverwrite $base (deepCopy (.override | default dict))) -}}
{{- end -}}

{{/*
rpcscope-stack.lookupSecret: the existing Secret `name` in the release namespace as JSON ("{}" when
absent or when rendering offline). Every `lookup` in the chart goes through this one template, so
the upgrade-safety tests can substitute it (tests/chart) and exercise all the reuse logic below.
`kind`/`apiVersion` (default Secret, v1) look up another object, e.g. the running StatefulSet.
Args: (dict "ctx" $ "name" "<secret name>" ["kind" "StatefulSet" "apiVersion" "apps/v1"])
Use: $s := include "rpcscope-stack.lookupSecret" (dict ...) | fromJson
*/}}
{{- define "rpcscope-stack.lookupSecret" -}}
{{- $s := lookup (.apiVersion | default "v1") (.kind | default "Secret") .ctx.Release.Namespace .name -}}
{{- if $s -}}{{- toJson $s -}}{{- else -}}{}{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.generatedSecretValue: a generated secret value that stays the same across
upgrades. Order: the key in the release's existing Secret (lookup) -> the value generated earlier
in this same render (so two templates that both need it agree) -> a fresh random value.
Returned base64-encoded, ready for a Secret's `data:`.
Args: (dict "ctx" $ "secret" "<secret name>" "key" "<data key>" "length" 32)
Caveat (documented in README): `helm template` and GitOps tools that render without cluster
access cannot look up, so they generate a new value each render; use an existingSecret there.
*/}}
{{- define "rpcscope-stack.generatedSecretValue" -}}
{{- $root := .ctx -}}
{{- $cacheKey := printf "secret/%s/%s" .secret .key -}}
{{- $existing := include "rpcscope-stack.lookupSecret" (dict "ctx" .ctx "name" .secret) | fromJson -}}
{{- $data := (get $existing "data") | default dict -}}
{{- if hasKey $data .key -}}
{{- get $data .key -}}
{{- else -}}
{{- $store := $root.rpcscopeRenderCache | default dict -}}
{{- if not (hasKey $store $cacheKey) -}}
{{- $_ := set $store $cacheKey (randAlphaNum (int (.length | default 32)) | b64enc) -}}
{{- $_ := set $root "rpcscopeRenderCache" $store -}}
{{- end -}}
{{- get $store $cacheKey -}}
{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.ca: the stack's certificate authority as JSON {"crt": PEM, "key": PEM}.
Order: `global.tls.existingCASecret` (a kubernetes.io/tls Secret the user manages, e.g. from
cert-manager) -> the CA Secret this chart created at install (`<fullname>-ca`, reused on upgrade)
-> a new self-signed CA (generated once per render, cached, and stored in `<fullname>-ca`).
Args: $ (root context)
*/}}
{{- define "rpcscope-stack.ca" -}}
{{- $root := . -}}
{{- $store := $root.rpcscopeRenderCache | default dict -}}
{{- if not (hasKey $store "ca") -}}
{{- $name := .Values.global.tls.existingCASecret | default (printf "%s-ca" (include "rpcscope-stack.fullname" .)) -}}
{{- $existing := include "rpcscope-stack.lookupSecret" (dict "ctx" . "name" $name) | fromJson -}}
{{- $data := (get $existing "data") | default dict -}}
{{- if and (hasKey $data "tls.crt") (hasKey $data "tls.key") -}}
{{- $_ := set $store "ca" (dict "crt" (get $data "tls.crt" | b64dec) "key" (get $data "tls.key" | b64dec)) -}}
{{- else -}}
{{- $ca := genCA (printf "%s-ca" (include "rpcscope-stack.fullname" .)) (int .Values.global.tls.caValidityDays) -}}
{{- $_ := set $store "ca" (dict "crt" $ca.Cert "key" $ca.Key) -}}
{{- end -}}
{{- $_ := set $root "rpcscopeRenderCache" $store -}}
{{- end -}}
{{- toJson (get $store "ca") -}}
{{- end -}}

{{/*
rpcscope-stack.tlsCert: a server certificate for a component, signed by the stack CA, as JSON
{"tls.crt", "tls.key", "ca.crt"} (base64, ready for a Secret's `data:`).
Reuses the certificate in the existing `<componentName>-tls` Secret when it is there and was
issued under the current CA (its `ca.crt` matches), so upgrades do not rotate certificates (and
do not restart every client); a CA change reissues them. The SANs cover the
component Service and its headless Service in short, namespaced and cluster-local forms, plus
`extraDnsNames`.
Args: (dict "ctx" $ "component" "elasticsearch" "extraDnsNames" (list ...))
*/}}
{{- define "rpcscope-stack.tlsCert" -}}
{{- $root := .ctx -}}
{{- $store := $root.rpcscopeRenderCache | default dict -}}
{{- $svc := include "rpcscope-stack.componentName" (dict "ctx" .ctx "component" .component) -}}
{{- $secretName := printf "%s-tls" $svc -}}
{{- $cacheKey := printf "tls/%s" $secretName -}}
{{- if not (hasKey $store $cacheKey) -}}
{{- $ca := include "rpcscope-stack.ca" .ctx | fromJson -}}
{{- $existing := include "rpcscope-stack.lookupSecret" (dict "ctx" .ctx "name" $secretName) | fromJson -}}
{{- $data := (get $existing "data") | default dict -}}
{{- /* Reuse only a certificate issued under the current CA: after a CA change (another
global.tls.existingCASecret) the old certificate would not verify against the new ca.crt. */ -}}
{{- if and (hasKey $data "tls.crt") (hasKey $data "tls.key") (eq (get $data "ca.crt" | default "") ($ca.crt | b64enc)) -}}
{{- $_ := set $store $cacheKey (dict "tls.crt" (get $data "tls.crt") "tls.key" (get $data "tls.key") "ca.crt" ($ca.crt | b64enc)) -}}
{{- else -}}
{{- $ns := .ctx.Release.Namespace -}}
{{- $domain := .ctx.Values.global.clusterDomain -}}
{{- $names := list $svc (printf "%s-headless" $svc) -}}
{{- $dns := list -}}
{{- range $names -}}
{{- $dns = concat $dns (list . (printf "%s.%s" . $ns) (printf "%s.%s.svc" . $ns) (printf "%s.%s.svc.%s" . $ns $domain) (printf "*.%s.%s.svc" . $ns) (printf "*.%s.%s.svc.%s" . $ns $domain)) -}}
{{- end -}}
{{- $dns = concat $dns (.extraDnsNames | default list) -}}
{{- $caObj := buildCustomCert ($ca.crt | b64enc) ($ca.key | b64enc) -}}
{{- $cert := genSignedCert $svc (list "127.0.0.1") $dns (int .ctx.Values.global.tls.certValidityDays) $caObj -}}
{{- $_ := set $store $cacheKey (dict "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) "ca.crt" ($ca.crt | b64enc)) -}}
{{- end -}}
{{- $_ := set $root "rpcscopeRenderCache" $store -}}
{{- end -}}
{{- toJson (get $store $cacheKey) -}}
{{- end -}}

{{/*
rpcscope-stack.serviceAccountName: the ServiceAccount a component's pods run as.
Args: (dict "ctx" $ "component" "<component>")
*/}}
{{- define "rpcscope-stack.serviceAccountName" -}}
{{- include "rpcscope-stack.componentName" . -}}
{{- end -}}

{{/*
rpcscope-stack.prometheusUrl: where Grafana (and NOTES) reach Prometheus: the in-chart Service,
or `prometheus.external.url`.
*/}}
{{- define "rpcscope-stack.prometheusUrl" -}}
{{- if .Values.prometheus.enabled -}}
{{- printf "http://%s.%s.svc.%s:9090" (include "rpcscope-stack.componentName" (dict "ctx" . "component" "prometheus")) .Release.Namespace .Values.global.clusterDomain -}}
{{- else -}}
{{- .Values.prometheus.external.url -}}
{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.alertmanagerUrl: the in-chart Alertmanager Service URL, or
`alertmanager.external.url`.
*/}}
{{- define "rpcscope-stack.alertmanagerUrl" -}}
{{- if .Values.alertmanager.enabled -}}
{{- printf "http://%s.%s.svc.%s:9093" (include "rpcscope-stack.componentName" (dict "ctx" . "component" "alertmanager")) .Release.Namespace .Values.global.clusterDomain -}}
{{- else -}}
{{- .Values.alertmanager.external.url -}}
{{- end -}}
{{- end -}}

{{/*
rpcscope-stack.elasticsearchUrl: the in-chart Elasticsearch HTTPS Service, or
`elasticsearch.external.url`.
*/}}
{{- define "rpcscope-stack.elasticsearchUrl" -}}
{{- if .Values.elasticsearch.enabled -}}
{{- printf "https://%s.%s.svc.%s:9200" (include "rpcscope-stack.componentName" (dict "ctx" . "component" "elasticsearch")) .Release.Namespace .Values.global.clusterDomain -}}
{{- else -}}
{{- .Values.elasticsearch.external.url -}}
{{- end -}}
{{- end -}}
