{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "ailake-reconciler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "ailake-reconciler.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ailake-reconciler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (app.kubernetes.io/*), on every object. */}}
{{- define "ailake-reconciler.labels" -}}
helm.sh/chart: {{ include "ailake-reconciler.chart" . }}
{{ include "ailake-reconciler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: ailake-reconciler
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "ailake-reconciler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ailake-reconciler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ailake-reconciler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ailake-reconciler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ailake-reconciler.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "ailake-reconciler.leaseName" -}}
{{- default (include "ailake-reconciler.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Directory the reconciler reads manifests from. */}}
{{- define "ailake-reconciler.manifestsPath" -}}
{{- if .Values.gitSync.enabled }}
{{- $path := printf "%s/%s" (trimSuffix "/" .Values.gitSync.root) .Values.gitSync.link }}
{{- if .Values.gitSync.subdir }}
{{- printf "%s/%s" $path (trimAll "/" .Values.gitSync.subdir) }}
{{- else }}
{{- $path }}
{{- end }}
{{- else }}
{{- .Values.manifests.mountPath }}
{{- end }}
{{- end }}

{{/* "true" when the state store is PostgreSQL (state.postgres.existingSecret), else "". */}}
{{- define "ailake-reconciler.postgres" -}}
{{- if .Values.state.postgres.existingSecret }}true{{ end }}
{{- end }}

{{/* Pods: replicaCount, or 2 with PostgreSQL and 1 with SQLite. */}}
{{- define "ailake-reconciler.replicaCount" -}}
{{- if kindIs "invalid" .Values.replicaCount }}
{{- if include "ailake-reconciler.postgres" . }}2{{ else }}1{{ end }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* The Deployment's strategy: the strategy value, or RollingUpdate (one pod at a time,
never fewer ready than wanted) with PostgreSQL and Recreate with SQLite. */}}
{{- define "ailake-reconciler.strategy" -}}
{{- if .Values.strategy.type }}
{{- toYaml .Values.strategy }}
{{- else if include "ailake-reconciler.postgres" . }}
type: RollingUpdate
rollingUpdate:
  maxSurge: 1
  maxUnavailable: 0
{{- else }}
type: Recreate
{{- end }}
{{- end }}

{{/* "true" when a Kubernetes Lease elects the leader: leaderElection.enabled, SQLite. */}}
{{- define "ailake-reconciler.leaseElection" -}}
{{- if and .Values.leaderElection.enabled (not (include "ailake-reconciler.postgres" .)) }}true{{ end }}
{{- end }}

{{- define "ailake-reconciler.pvcName" -}}
{{- default (printf "%s-state" (include "ailake-reconciler.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Value checks the JSON schema cannot express, each failing with what to set. */}}
{{- define "ailake-reconciler.validate" -}}
{{- $git := .Values.git }}
{{- $_ := required "apiUrl is required: the GoodData Cloud organisation's URL, e.g. --set apiUrl=https://example.cloud.gooddata.com" .Values.apiUrl }}
{{- if regexMatch "/api(/|$)" (trimPrefix "https://" (trimPrefix "http://" .Values.apiUrl)) }}
{{- fail (printf "apiUrl must be the organisation's root URL, without /api/v1 (the reconciler adds /api/v1/ailake/... itself): %s" .Values.apiUrl) }}
{{- end }}
{{- $_ := required "a token secret is required: kubectl create secret generic ailake-api-token --from-literal=token=<API token>, then --set token.existingSecret=ailake-api-token" .Values.token.existingSecret }}
{{- if and $git.enabled .Values.gitSync.enabled }}
{{- fail "set either git.enabled (the built-in git follower) or gitSync.enabled (the git-sync sidecar), not both" }}
{{- end }}
{{- if and $git.enabled .Values.manifests.configMap }}
{{- fail "set either git.enabled or manifests.configMap, not both" }}
{{- end }}
{{- if and .Values.gitSync.enabled .Values.manifests.configMap }}
{{- fail "set either gitSync.enabled or manifests.configMap, not both" }}
{{- end }}
{{- if not (or $git.enabled .Values.gitSync.enabled .Values.manifests.configMap) }}
{{- fail "no manifests source: set git.enabled=true (with git.url), gitSync.enabled=true (with gitSync.repo) or manifests.configMap" }}
{{- end }}
{{- if and $git.enabled (not $git.url) }}
{{- fail "git.enabled requires git.url" }}
{{- end }}
{{- if and $git.enabled (regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*:[^/@]*@" $git.url) }}
{{- fail "git.url holds a password; put the token in a Secret (git.token.existingSecret) instead" }}
{{- end }}
{{- if and $git.token.existingSecret $git.ssh.existingSecret }}
{{- fail "set either git.token.existingSecret or git.ssh.existingSecret, not both" }}
{{- end }}
{{- if and $git.enabled $git.token.existingSecret (not (hasPrefix "https://" $git.url)) }}
{{- fail "git.token.existingSecret needs an https:// git.url" }}
{{- end }}
{{- if and $git.enabled $git.ssh.existingSecret (or (hasPrefix "https://" $git.url) (hasPrefix "http://" $git.url)) }}
{{- fail "git.ssh.existingSecret needs an ssh:// or git@host:path git.url" }}
{{- end }}
{{- if and .Values.gitSync.enabled (not .Values.gitSync.repo) }}
{{- fail "gitSync.enabled requires gitSync.repo" }}
{{- end }}
{{- if and .Values.gitSync.https.existingSecret .Values.gitSync.ssh.existingSecret }}
{{- fail "set either gitSync.https.existingSecret or gitSync.ssh.existingSecret, not both" }}
{{- end }}
{{- if not (kindIs "invalid" .Values.replicas) }}
{{- fail (printf "replicas is now replicaCount (Helm's convention): --set replicaCount=%v" .Values.replicas) }}
{{- end }}
{{- $postgres := include "ailake-reconciler.postgres" . }}
{{- $replicas := int (include "ailake-reconciler.replicaCount" .) }}
{{- $strategy := (include "ailake-reconciler.strategy" . | fromYaml).type }}
{{- if $postgres }}
{{- if .Values.persistence.enabled }}
{{- fail "persistence.enabled is for the SQLite store; with state.postgres.existingSecret the database keeps the state and history: set persistence.enabled=false" }}
{{- end }}
{{- else }}
{{- if gt $replicas 1 }}
{{- fail (printf "replicaCount: %d needs the PostgreSQL store (state.postgres.existingSecret): with SQLite every pod has its own store, so run one pod (replicaCount: 1), or share a database for high availability" $replicas) }}
{{- end }}
{{- if ne $strategy "Recreate" }}
{{- if .Values.persistence.enabled }}
{{- fail "persistence.enabled requires strategy.type: Recreate (a ReadWriteOnce volume and the SQLite lock cannot be shared by the old and the new pod)" }}
{{- end }}
{{- fail "strategy.type: RollingUpdate needs the PostgreSQL store (state.postgres.existingSecret): with SQLite the old and the new pod of a rolling update would each run with its own store; keep strategy.type: Recreate" }}
{{- end }}
{{- end }}
{{- end }}
