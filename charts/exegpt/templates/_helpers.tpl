{{/*
Names, labels and images shared by the templates.
*/}}

{{/* The release's full name: the release name, with the chart's name unless it already
holds it; at most 63 characters. */}}
{{- define "exegpt.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object of the chart carries; each adds its
app.kubernetes.io/component (operator). */}}
{{- define "exegpt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The operator pod's selector (immutable once installed). */}}
{{- define "exegpt.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's service account. */}}
{{- define "exegpt.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "exegpt.fullname" .) -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: a digest pins it, else the tag,
else the chart's appVersion. Called with (dict "image" ... "appVersion" ...). */}}
{{- define "exegpt.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .appVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/* The pod security context of the Pod Security Standards `restricted` profile, with a
numeric non-root user: the same as the operator gives its own pods
(operator/podspec.py). */}}
{{- define "exegpt.podSecurityContext" -}}
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
runAsGroup: 10001
runAsNonRoot: true
runAsUser: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container security context of the `restricted` profile plus a read-only root
filesystem (writable paths are emptyDir volumes). */}}
{{- define "exegpt.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
{{- end -}}

{{/* The operator pods' selector labels as key=value,... (EXEGPT_OPERATOR_POD_SELECTOR). */}}
{{- define "exegpt.operatorPodSelector" -}}
app.kubernetes.io/name={{ .Chart.Name }},app.kubernetes.io/instance={{ .Release.Name }},app.kubernetes.io/component=operator
{{- end -}}
