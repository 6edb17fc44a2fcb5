{{- define "workpool.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "workpool.labels" -}}
app.kubernetes.io/name: workpool
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "workpool.selector" -}}
app.kubernetes.io/name: workpool
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "workpool.serviceAccount" -}}
{{- default (include "workpool.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "workpool.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- /* The Secret the bundled NATS's trust lives in (made by the bootstrap hook). */ -}}
{{- define "workpool.natsAuthSecret" -}}
{{- printf "%s-nats-auth" (include "workpool.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* The operator's NATS credentials and account seed: the values given, else the
bundled NATS's trust when it runs with auth. */ -}}
{{- define "workpool.operatorNatsCredentials" -}}
{{- if .Values.operator.natsCredentialsSecret -}}
{{- .Values.operator.natsCredentialsSecret -}}
{{- else if and .Values.nats.enabled .Values.nats.auth -}}
{{- include "workpool.natsAuthSecret" . -}}
{{- end -}}
{{- end -}}

{{- define "workpool.operatorNatsAccount" -}}
{{- if .Values.operator.natsAccountSecret -}}
{{- .Values.operator.natsAccountSecret -}}
{{- else if and .Values.nats.enabled .Values.nats.auth -}}
{{- include "workpool.natsAuthSecret" . -}}
{{- end -}}
{{- end -}}
