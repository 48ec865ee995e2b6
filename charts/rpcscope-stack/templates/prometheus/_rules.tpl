{{/*
The rules Prometheus evaluates, shared by rules-configmap.yaml (our Prometheus) and operator.yaml
(PrometheusRule objects):

- every files/rules/*.yaml (generated from alerts/ by tools/generate.py), with
  `alerting.alerts.<name>` applied (`enabled: false` drops the alert, `for` replaces its `for:`)
  and the link annotations completed with `alerting.links` (alerts/_common.py explains the paths);
- `slos.yaml`: the rules of every `alerting.slos` entry, from the generated template
  templates/generated/_slo_rules.tpl (alerts/slo.py), links completed the same way.

rpcscope-stack.alerting.ruleFiles returns JSON {file name: {"groups": [...]}}.
*/}}
{{- define "rpcscope-stack.alerting.ruleFiles" -}}
{{- $a := .Values.alerting -}}
{{- $files := dict -}}
{{- if $a.enabled -}}
{{- $links := include "rpcscope-stack.alerting.links" . | fromJson -}}
{{- range $path, $_ := .Files.Glob "files/rules/*.yaml" -}}
{{- $doc := $.Files.Get $path | fromYaml -}}
{{- $groups := list -}}
{{- range $doc.groups -}}
{{- $rules := list -}}
{{- range .rules -}}
{{- $o := dict -}}
{{- if .alert -}}{{- $o = get $a.alerts .alert | default dict -}}{{- end -}}
{{- if not (and (hasKey $o "enabled") (not $o.enabled)) -}}
{{- $rule := deepCopy . -}}
{{- with $o.for -}}{{- $_ := set $rule "for" . -}}{{- end -}}
{{- $rules = append $rules (include "rpcscope-stack.alerting.completeLinks" (dict "rule" $rule "links" $links) | fromJson) -}}
{{- end -}}
{{- end -}}
{{- if $rules -}}
{{- $groups = append $groups (set (deepCopy .) "rules" $rules) -}}
{{- end -}}
{{- end -}}
{{- if $groups -}}
{{- $_ := set $files (base $path) (dict "groups" $groups) -}}
{{- end -}}
{{- end -}}
{{- $sloGroups := list -}}
{{- range (include "rpcscope-stack.alerting.slos" . | fromJsonArray) -}}
{{- range (include "rpcscope-stack.alerting.sloGroups" (dict "slo" . "for" $a.slo.for) | fromJsonArray) -}}
{{- $rules := list -}}
{{- range .rules -}}
{{- $rules = append $rules (include "rpcscope-stack.alerting.completeLinks" (dict "rule" . "links" $links) | fromJson) -}}
{{- end -}}
{{- $sloGroups = append $sloGroups (set . "rules" $rules) -}}
{{- end -}}
{{- end -}}
{{- if $sloGroups -}}
{{- $_ := set $files "slos.yaml" (dict "groups" $sloGroups) -}}
{{- end -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{/*
rpcscope-stack.alerting.completeLinks: a rule (JSON) with its link annotations made absolute
(alerts/_common.py): `dashboard_url` and `logs_url` get the Grafana and Kibana URLs;
`runbook_url` ("<Grafana path of its runbook panel>#<anchor>") becomes that Grafana panel, or
`alerting.links.runbookUrl` + "#<anchor>" when set. Args: (dict "rule" <rule> "links" <links>)
*/}}
{{- define "rpcscope-stack.alerting.completeLinks" -}}
{{- $rule := deepCopy .rule -}}
{{- $l := .links -}}
{{- with $rule.annotations -}}
{{- $ann := . -}}
{{- with $ann.dashboard_url -}}{{- if hasPrefix "/" . -}}{{- $_ := set $ann "dashboard_url" (print $l.grafanaUrl .) -}}{{- end -}}{{- end -}}
{{- with $ann.logs_url -}}{{- if hasPrefix "/" . -}}{{- $_ := set $ann "logs_url" (print $l.kibanaUrl .) -}}{{- end -}}{{- end -}}
{{- with $ann.runbook_url -}}
{{- if hasPrefix "/" . -}}
{{- $parts := splitn "#" 2 . -}}
{{- if $l.runbookUrl -}}
{{- $_ := set $ann "runbook_url" (print $l.runbookUrl "#" $parts._1) -}}
{{- else -}}
{{- $_ := set $ann "runbook_url" (print $l.grafanaUrl $parts._0) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $rule -}}
{{- end -}}

{{/*
rpcscope-stack.alerting.links: the base URLs of the alerts' link annotations, as JSON.
*/}}
{{- define "rpcscope-stack.alerting.links" -}}
{{- $l := .Values.alerting.links -}}
{{- $kibana := $l.kibanaUrl | default .Values.kibana.publicBaseUrl | default .Values.kibana.external.url | default "https://localhost:5601" -}}
{{- $rootUrl := dig "server" "root_url" "" (index .Values.grafana "grafana.ini") -}}
{{- $grafana := $l.grafanaUrl | default $rootUrl | default "http://localhost:3000" -}}
{{- toJson (dict "grafanaUrl" ($grafana | trimSuffix "/") "kibanaUrl" ($kibana | trimSuffix "/") "runbookUrl" $l.runbookUrl) -}}
{{- end -}}

{{/*
rpcscope-stack.alerting.slos: `alerting.slos` checked and normalized for the generated rule
template, as a JSON list. A bad SLO fails the install here with the value to fix (each message
has a test in tests/test_alert_rules.py).
*/}}
{{- define "rpcscope-stack.alerting.slos" -}}
{{- $a := .Values.alerting -}}
{{- $out := list -}}
{{- $seen := dict -}}
{{- range $i, $s := $a.slos -}}
{{- $path := printf "alerting.slos[%d]" $i -}}
{{- $name := $s.name | default "" -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $name) -}}
{{- fail (printf "%s.name is %q: give every SLO a name of lowercase letters, digits and '-' (at most 63), e.g. checkout-availability; it becomes the `slo` label of its rules and alerts" $path $name) -}}
{{- end -}}
{{- if hasKey $seen $name -}}
{{- fail (printf "%s.name %q is already used by alerting.slos[%d]: SLO names must be unique (their rules are told apart by it); rename one" $path $name (get $seen $name)) -}}
{{- end -}}
{{- $_ := set $seen $name $i -}}
{{- if not $s.service -}}
{{- fail (printf "%s (%s) has no service: set %s.service to the grpc_service it covers (a regex, e.g. shop.v1.Shop, or \".+\" for every service)" $path $name $path) -}}
{{- end -}}
{{- if not (hasKey $s "objective") -}}
{{- fail (printf "%s (%s) has no objective: set %s.objective to the share of calls that must succeed over 30 days, e.g. 0.999" $path $name $path) -}}
{{- end -}}
{{- $obj := float64 $s.objective -}}
{{- if or (le $obj 0.0) (ge $obj 1.0) -}}
{{- fail (printf "%s.objective is %v, outside (0, 1): write it as a ratio, e.g. 0.999 for 99.9 %%" $path $s.objective) -}}
{{- end -}}
{{- $codes := $s.errorCodes | default $a.slo.errorCodes -}}
{{- $sel := printf "grpc_service=~%q" $s.service -}}
{{- with $s.method -}}{{- $sel = printf "%s,grpc_method=~%q" $sel . -}}{{- end -}}
{{- $n := dict "name" $name "service" $s.service "selector" $sel "objective" $obj "objectivePercent" (printf "%.6g" (mulf $obj 100.0)) "codes" (join "|" $codes) "codesKql" (join " or " $codes) "codesText" (join ", " $codes) "latency" dict -}}
{{- with $s.latency -}}
{{- if not (hasKey . "threshold") -}}
{{- fail (printf "%s.latency has no threshold: set %s.latency.threshold in seconds (a bucket boundary, e.g. 0.25)" $path $path) -}}
{{- end -}}
{{- $lobj := float64 (hasKey . "objective" | ternary .objective $s.objective) -}}
{{- if or (le $lobj 0.0) (ge $lobj 1.0) -}}
{{- fail (printf "%s.latency.objective is %v, outside (0, 1): write it as a ratio, e.g. 0.99 for 99 %% of calls within the threshold" $path $lobj) -}}
{{- end -}}
{{- $t := float64 .threshold -}}
{{- $buckets := $s.buckets | default $a.slo.buckets -}}
{{- $found := false -}}
{{- $below := "" -}}
{{- $above := "" -}}
{{- range $buckets -}}
{{- $b := float64 . -}}
{{- if eq $b $t -}}{{- $found = true -}}{{- end -}}
{{- if and (lt $b $t) (or (eq $below "") (gt $b (float64 $below))) -}}{{- $below = toString $b -}}{{- end -}}
{{- if and (gt $b $t) (or (eq $above "") (lt $b (float64 $above))) -}}{{- $above = toString $b -}}{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- $near := list -}}
{{- with $below -}}{{- $near = append $near . -}}{{- end -}}
{{- with $above -}}{{- $near = append $near . -}}{{- end -}}
{{- $bucketsPath := ternary (printf "%s.buckets" $path) "alerting.slo.buckets" (hasKey $s "buckets") -}}
{{- fail (printf "%s.latency.threshold %v is not a bucket boundary of %s %v: a latency SLO counts calls per histogram bucket, so the threshold must be one. The nearest boundaries are %s: use one of them, or add %v to the buckets your services export and to %s" $path .threshold $bucketsPath $buckets (join " and " $near) .threshold $bucketsPath) -}}
{{- end -}}
{{- $txt := toString $t -}}
{{- $le := regexQuoteMeta $txt | replace "\\" "\\\\" -}}
{{- if not (contains "." $txt) -}}{{- $le = print $le "(\\\\.0)?" -}}{{- end -}}
{{- $text := ternary (printf "%.4gms" (mulf $t 1000.0)) (printf "%.4gs" $t) (lt $t 1.0) -}}
{{- $_ := set $n "latency" (dict "threshold" $t "le" $le "thresholdText" $text "thresholdNs" (printf "%.0f" (mulf $t 1000000000.0)) "objective" $lobj "objectivePercent" (printf "%.6g" (mulf $lobj 100.0))) -}}
{{- end -}}
{{- $out = append $out $n -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
rpcscope-stack.alerting.validate: `alerting.alerts` names only alerts the chart ships (a typo would
otherwise silently keep the alert on), and the SLOs are valid.
*/}}
{{- define "rpcscope-stack.alerting.validate" -}}
{{- $a := .Values.alerting -}}
{{- if $a.enabled -}}
{{- $known := list "GRPCAvailabilityBudgetBurn" "GRPCLatencyBudgetBurn" -}}
{{- range $path, $_ := .Files.Glob "files/rules/*.yaml" -}}
{{- range ($.Files.Get $path | fromYaml).groups -}}
{{- range .rules -}}{{- if .alert -}}{{- $known = append $known .alert -}}{{- end -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name, $_ := $a.alerts -}}
{{- if has $name (list "GRPCAvailabilityBudgetBurn" "GRPCLatencyBudgetBurn") -}}
{{- fail (printf "alerting.alerts.%s: the SLO burn-rate alerts are configured per SLO, not here: change alerting.slos (remove an SLO, or drop its latency) or alerting.slo.for" $name) -}}
{{- end -}}
{{- if not (has $name $known) -}}
{{- fail (printf "alerting.alerts.%s: no alert of that name; the chart's alerts are %s" $name (join ", " ($known | uniq | sortAlpha))) -}}
{{- end -}}
{{- end -}}
{{- $_ := include "rpcscope-stack.alerting.slos" . -}}
{{- end -}}
{{- if .Values.alertmanager.enabled -}}
{{- $receivers := list "null" -}}
{{- range .Values.alertmanager.receivers -}}{{- $receivers = append $receivers .name -}}{{- end -}}
{{- range $key := list "pageReceiver" "ticketReceiver" -}}
{{- $r := get $.Values.alertmanager.route $key -}}
{{- if and $r (not (has $r $receivers)) -}}
{{- fail (printf "alertmanager.route.%s is %q, which is not defined: add it to alertmanager.receivers or use one of %s" $key $r (join ", " $receivers)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
