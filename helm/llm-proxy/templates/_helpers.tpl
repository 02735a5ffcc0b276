{{/* Names, labels and the pieces every llm-proxy pod shares. */}}

{{- define "llm-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-proxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llm-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llm-proxy.labels" -}}
helm.sh/chart: {{ include "llm-proxy.chart" . }}
{{ include "llm-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "proxy") */}}
{{- define "llm-proxy.componentLabels" -}}
{{ include "llm-proxy.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "llm-proxy.componentSelector" -}}
{{ include "llm-proxy.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "llm-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "llm-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llm-proxy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret every container reads: the operator's own, or the one this chart renders. */}}
{{- define "llm-proxy.secretName" -}}
{{- if .Values.secret.existingSecret -}}
{{- .Values.secret.existingSecret -}}
{{- else -}}
{{- include "llm-proxy.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Data of the ConfigMap: the operator's non-secret settings. */}}
{{- define "llm-proxy.configData" -}}
{{- range $key, $value := .Values.config }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Data of the chart-rendered Secret; fails early when a required secret is missing. */}}
{{- define "llm-proxy.secretData" -}}
{{- $values := .Values.secret.values -}}
DATABASE_URL: {{ required "secret.values.DATABASE_URL is required (a postgres:// URL), or set secret.existingSecret" $values.DATABASE_URL | quote }}
ENCRYPTION_KEY: {{ required "secret.values.ENCRYPTION_KEY is required (llm-proxy manage keys new), or set secret.existingSecret" $values.ENCRYPTION_KEY | quote }}
{{- range $key, $value := $values }}
{{- if and (ne $key "DATABASE_URL") (ne $key "ENCRYPTION_KEY") $value }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Seconds Kubernetes waits before SIGKILL: the pre-stop pause, the app's drain, and a margin. */}}
{{- define "llm-proxy.proxyTerminationGrace" -}}
{{- $p := .Values.proxy -}}
{{- if and $p.upstreamTimeoutSeconds (lt (int $p.shutdownGracePeriodSeconds) (int $p.upstreamTimeoutSeconds)) -}}
{{- fail (printf "proxy.shutdownGracePeriodSeconds (%v) must be at least proxy.upstreamTimeoutSeconds (%v), or a rollout cuts the longest streams" $p.shutdownGracePeriodSeconds $p.upstreamTimeoutSeconds) -}}
{{- end -}}
{{- $needed := add $p.preStopSleepSeconds $p.shutdownGracePeriodSeconds -}}
{{- if $p.terminationGracePeriodSeconds -}}
{{- if le (int $p.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "proxy.terminationGracePeriodSeconds (%v) must exceed proxy.preStopSleepSeconds + proxy.shutdownGracePeriodSeconds (%v), or Kubernetes kills streams still draining" $p.terminationGracePeriodSeconds $needed) -}}
{{- end -}}
{{- $p.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $needed 20 -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security: non-root, the image's uid, RuntimeDefault seccomp. */}}
{{- define "llm-proxy.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "llm-proxy.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end -}}

{{/* envFrom shared by every llm-proxy container. */}}
{{- define "llm-proxy.envFrom" -}}
- configMapRef:
    name: {{ include "llm-proxy.fullname" . }}
- secretRef:
    name: {{ include "llm-proxy.secretName" . }}
{{- end -}}

{{/* Rollouts follow changes of the rendered configuration. */}}
{{- define "llm-proxy.checksums" -}}
checksum/config: {{ include "llm-proxy.configData" . | sha256sum }}
{{- if not .Values.secret.existingSecret }}
checksum/secret: {{ include "llm-proxy.secretData" . | sha256sum }}
{{- end }}
{{- end -}}

{{/* Pod scheduling knobs of one component's values. */}}
{{- define "llm-proxy.scheduling" -}}
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
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Extra env of one component, as a map of NAME: value. */}}
{{- define "llm-proxy.extraEnv" -}}
{{- range $key, $value := . }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}
