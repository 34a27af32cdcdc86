{{/* The one image: ghcr.io/coscale/coscale:<tag or appVersion>. */}}
{{- define "coscale.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Labels of every object; call with (dict "ctx" $ "component" "control-plane"). */}}
{{- define "coscale.labels" -}}
app.kubernetes.io/name: coscale
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: coscale
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version }}
{{- end }}

{{/* Selector labels (and pod template labels) of a component. */}}
{{- define "coscale.selectorLabels" -}}
app.kubernetes.io/name: coscale
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/* The pod security context of coscale's own pods (the image's user is 10001). */}}
{{- define "coscale.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
{{- if .fsGroup }}
fsGroup: 10001
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The container security context: no privilege escalation, no capabilities. */}}
{{- define "coscale.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The namespace the operator watches when scope is namespace. */}}
{{- define "coscale.watchNamespace" -}}
{{ .Values.watchNamespace | default .Release.Namespace }}
{{- end }}

{{/* Fails the render on combinations of values that cannot work (single values are
   checked by values.schema.json). */}}
{{- define "coscale.checkValues" -}}
{{- if and .Values.metricsApi.enabled (not .Values.metricsApi.insecureSkipTLSVerify) (not .Values.metricsApi.caBundle) (not (hasKey .Values.metricsApi.annotations "cert-manager.io/inject-ca-from")) }}
{{- fail "metricsApi.insecureSkipTLSVerify=false needs metricsApi.caBundle or a cert-manager.io/inject-ca-from annotation in metricsApi.annotations" }}
{{- end }}
{{- end }}
