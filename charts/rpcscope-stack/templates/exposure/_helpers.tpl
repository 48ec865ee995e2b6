{{/*
Exposure of the UIs and APIs through your Ingress controller or Gateway API gateway:
`<component>.ingress` renders an networking.k8s.io/v1 Ingress, `<component>.httpRoute` a
gateway.networking.k8s.io/v1 HTTPRoute, for grafana (3000), prometheus (9090), alertmanager
(9093) and kibana (5601, HTTPS: the controller must speak TLS to it, see README). With either
on, the component's NetworkPolicy admits `networkPolicy.ingressController.from` on its port.
*/}}

{{/* The exposable components and their Service ports. */}}
{{- define "rpcscope-stack.exposure.ports" -}}
{{- toJson (dict "grafana" 3000 "prometheus" 9090 "alertmanager" 9093 "kibana" 5601) -}}
{{- end -}}

{{/* "true" when a component is exposed through an Ingress or HTTPRoute. Args: (dict "ctx" $ "component" "grafana") */}}
{{- define "rpcscope-stack.exposure.enabled" -}}
{{- $v := index .ctx.Values .component -}}
{{- if and $v.enabled (or $v.ingress.enabled $v.httpRoute.enabled) -}}true{{- end -}}
{{- end -}}

{{/* The ingress-controller peers for a component's NetworkPolicy `from:` list, or nothing. Args: (dict "ctx" $ "component" "grafana") */}}
{{- define "rpcscope-stack.np.ingressControllerPeers" -}}
{{- if include "rpcscope-stack.exposure.enabled" . -}}
{{- toYaml .ctx.Values.networkPolicy.ingressController.from -}}
{{- end -}}
{{- end -}}
