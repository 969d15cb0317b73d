{{/* Labels on every object's metadata (selectors keep only app.kubernetes.io/name and component). */}}
{{- define "cilia.labels" -}}
app.kubernetes.io/name: cilia
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cilia.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The control plane's Service, as proxies and the API server reach it. */}}
{{- define "cilia.service" -}}
cilia.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* Port proxies reach xDS on: mTLS 18443, or plaintext 18000 (xds.mtls=false). */}}
{{- define "cilia.xdsPort" -}}
{{ if .Values.xds.mtls }}18443{{ else }}18000{{ end }}
{{- end -}}
