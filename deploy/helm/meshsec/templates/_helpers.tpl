{{/*
Names, labels and small shared fragments.  Every object name is derived here so that overlays and
tests can rely on one scheme: <fullname>-controller, <fullname>-agent, <fullname>-etcd.
*/}}

{{- define "meshsec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshsec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "meshsec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; "component" is controller, agent or etcd. */}}
{{- define "meshsec.labels" -}}
helm.sh/chart: {{ include "meshsec.chart" .root }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: meshsec
{{ include "meshsec.selectorLabels" . }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Immutable selector labels (never add a version here). */}}
{{- define "meshsec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshsec.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "meshsec.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{- define "meshsec.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (printf "%s-controller" (include "meshsec.fullname" .)) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "meshsec.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (printf "%s-agent" (include "meshsec.fullname" .)) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "meshsec.agent.tokenSecretName" -}}
{{- if .Values.agent.bootstrapToken.value -}}
{{- printf "%s-bootstrap-token" (include "meshsec.fullname" .) -}}
{{- else -}}
{{- .Values.agent.bootstrapToken.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* In-cluster DNS name of the controller Service. */}}
{{- define "meshsec.controller.host" -}}
{{- printf "%s-controller.%s.svc" (include "meshsec.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Comma-separated etcd client endpoints for the controller (MESHSEC_ETCD). */}}
{{- define "meshsec.etcd.endpoints" -}}
{{- if eq .Values.etcd.mode "external" -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- else -}}
{{- $fullname := include "meshsec.fullname" . -}}
{{- $scheme := ternary "https" "http" .Values.etcd.tls.enabled -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.statefulset.replicas) -}}
{{- $eps = append $eps (printf "%s://%s-etcd-%d.%s-etcd-peer.%s.svc:%d" $scheme $fullname $i $fullname $.Release.Namespace (int $.Values.etcd.statefulset.clientPort)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}
{{- end -}}

{{/* The etcd StatefulSet's --initial-cluster value. */}}
{{- define "meshsec.etcd.initialCluster" -}}
{{- $fullname := include "meshsec.fullname" . -}}
{{- $scheme := ternary "https" "http" .Values.etcd.tls.enabled -}}
{{- $members := list -}}
{{- range $i := until (int .Values.etcd.statefulset.replicas) -}}
{{- $members = append $members (printf "%s-etcd-%d=%s://%s-etcd-%d.%s-etcd-peer.%s.svc:%d" $fullname $i $scheme $fullname $i $fullname $.Release.Namespace (int $.Values.etcd.statefulset.peerPort)) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{/* A pod anti-affinity term spreading one component over topologyKey. */}}
{{- define "meshsec.antiAffinity" -}}
{{- $term := dict "labelSelector" (dict "matchLabels" (fromYaml (include "meshsec.selectorLabels" .))) "topologyKey" .topologyKey -}}
podAntiAffinity:
{{- if eq .mode "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - {{- toYaml $term | nindent 6 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        {{- toYaml $term | nindent 8 }}
{{- end }}
{{- end -}}

{{/* An httpGet probe from a values block {path, ...timings} on a named port. */}}
{{- define "meshsec.httpProbe" -}}
httpGet:
  path: {{ .probe.path }}
  port: {{ .port }}
{{- with (omit .probe "path") }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod annotations: Prometheus scrape hints when metrics are on, then the user's own. */}}
{{- define "meshsec.podAnnotations" -}}
{{- $ann := dict -}}
{{- if .metrics -}}
{{- $_ := set $ann "prometheus.io/scrape" "true" -}}
{{- $_ := set $ann "prometheus.io/port" (toString .port) -}}
{{- $_ := set $ann "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- $ann = merge (deepCopy (.extra | default dict)) $ann -}}
{{- if $ann -}}
{{- toYaml $ann -}}
{{- end -}}
{{- end -}}

{{/* policy/v1 (Kubernetes >= 1.21); policy/v1beta1 only where the server has nothing newer. */}}
{{- define "meshsec.pdbApiVersion" -}}
{{- if or (.Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget") (not (.Capabilities.APIVersions.Has "policy/v1beta1/PodDisruptionBudget")) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}
