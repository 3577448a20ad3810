{{/* <release>-<chart>, cut at 63 characters: the community chart's rule, so release
     "stolon" gives "stolon-stolon" and its proxy Service "stolon-stolon-proxy". */}}
{{- define "stolon.fullname" -}}
{{- printf "%s-%s" .Release.Name (default .Chart.Name .Values.nameOverride) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stolon.clusterName" -}}
{{- default (include "stolon.fullname" .) .Values.clusterName -}}
{{- end -}}

{{- define "stolon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "stolon.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stolon.secretName" -}}
{{- default (include "stolon.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* Labels on every object. The chart's version never goes into a selector. */}}
{{- define "stolon.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
stolon-cluster: {{ include "stolon.clusterName" . }}
{{- end -}}

{{/* A component's pods: the common labels and Stolon's "component" label. */}}
{{- define "stolon.podLabels" -}}
{{ include "stolon.labels" .root }}
component: stolon-{{ .component }}
{{- end -}}

{{/* The selector of one component's pods; Stolon's "component" label. */}}
{{- define "stolon.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
stolon-cluster: {{ include "stolon.clusterName" .root }}
component: stolon-{{ .component }}
{{- end -}}

{{/* Fails the render on values that cannot work, with the reason. */}}
{{- define "stolon.validate" -}}
{{- $backend := .Values.store.backend -}}
{{- if not (has $backend (list "kubernetes" "etcdv3")) -}}
{{- fail (printf "store.backend %q is not supported: use kubernetes or etcdv3" $backend) -}}
{{- end -}}
{{- if and (eq $backend "etcdv3") (not .Values.store.endpoints) -}}
{{- fail "store.backend etcdv3 needs store.endpoints (for example http://etcd-0.etcd:2379)" -}}
{{- end -}}
{{- if and (eq $backend "kubernetes") (ne .Values.store.kubeResourceKind "configmap") -}}
{{- fail (printf "store.kubeResourceKind %q is not supported: only configmap" .Values.store.kubeResourceKind) -}}
{{- end -}}
{{- range $component := list "keeper" "sentinel" "proxy" -}}
{{- $replicas := int (index $.Values $component).replicas -}}
{{- if lt $replicas 1 -}}
{{- fail (printf "%s.replicas must be at least 1 (found %d)" $component $replicas) -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$" (include "stolon.clusterName" .)) -}}
{{- fail (printf "clusterName %q must be at most 40 lowercase letters, digits and '-', starting and ending with a letter or digit" (include "stolon.clusterName" .)) -}}
{{- end -}}
{{- $class := toString .Values.persistence.storageClassName -}}
{{- if and .Values.persistence.enabled $class (ne $class "-") (not (regexMatch "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" $class)) -}}
{{- fail (printf "persistence.storageClassName %q cannot name a StorageClass: class names are lowercase letters, digits, '-' and '.' (%q?); the API server would accept the keepers' StatefulSet and never create its volumes" $class (lower $class)) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9_]+$" (toString .Values.keeper.uid_prefix)) -}}
{{- fail (printf "keeper.uid_prefix %q may only hold a-z, 0-9 and _" (toString .Values.keeper.uid_prefix)) -}}
{{- end -}}
{{- end -}}

{{/* The store flags every program takes, as environment variables with its prefix. */}}
{{- define "stolon.storeEnv" -}}
- name: {{ .prefix }}_CLUSTER_NAME
  value: {{ include "stolon.clusterName" .root | quote }}
- name: {{ .prefix }}_STORE_BACKEND
  value: {{ .root.Values.store.backend | quote }}
{{- if eq .root.Values.store.backend "kubernetes" }}
- name: {{ .prefix }}_KUBE_RESOURCE_KIND
  value: {{ .root.Values.store.kubeResourceKind | quote }}
{{- else }}
- name: {{ .prefix }}_STORE_ENDPOINTS
  value: {{ .root.Values.store.endpoints | quote }}
{{- end }}
- name: {{ .prefix }}_LOG_LEVEL
  value: {{ ternary "debug" "info" .root.Values.debug | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{- define "stolon.image" -}}
image: {{ printf "%s:%s" .Values.image (toString .Values.imageTag) | quote }}
imagePullPolicy: {{ .Values.imagePullPolicy }}
{{- end -}}

{{- define "stolon.podAnnotations" -}}
{{- if .Values.metrics.annotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | quote }}
{{- end -}}
{{- end -}}

{{/* policy/v1 where the API server has it (1.21+), policy/v1beta1 before. */}}
{{- define "stolon.pdbApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{- define "stolon.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.affinity }}
affinity:
{{- toYaml .values.affinity | nindent 2 }}
{{- else }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "stolon.selector" (dict "root" .root "component" .component) | nindent 14 }}
{{- end }}
{{- end -}}

{{/* The image's postgres user (uid 999); fsGroup makes the data volume and the Secret's
     files its own. */}}
{{- define "stolon.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 999
  runAsGroup: 999
  fsGroup: 999
  # Not a walk over the whole data directory at every mount; the keeper makes it private
  # again before PostgreSQL starts anyway.
  fsGroupChangePolicy: OnRootMismatch
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget for one component; none for a single replica, which it would
     keep from ever being evicted (a node drain would hang). */}}
{{- define "stolon.pdb" -}}
{{- $values := index .root.Values .component -}}
{{- if and $values.podDisruptionBudget.enabled (gt (int $values.replicas) 1) }}
---
apiVersion: {{ include "stolon.pdbApiVersion" .root }}
kind: PodDisruptionBudget
metadata:
  name: {{ include "stolon.fullname" .root }}-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "stolon.labels" .root | nindent 4 }}
spec:
  {{- $budget := $values.podDisruptionBudget }}
  {{- if and (hasKey $budget "minAvailable") (hasKey $budget "maxUnavailable") }}
  {{- fail (printf "%s.podDisruptionBudget: give minAvailable or maxUnavailable, not both" .component) }}
  {{- else if hasKey $budget "minAvailable" }}
  minAvailable: {{ $budget.minAvailable }}
  {{- else if hasKey $budget "maxUnavailable" }}
  maxUnavailable: {{ $budget.maxUnavailable }}
  {{- else if eq .component "keeper" }}
  maxUnavailable: 1
  {{- else }}
  minAvailable: 1
  {{- end }}
  selector:
    matchLabels:
      {{- include "stolon.selector" (dict "root" .root "component" .component) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* The cluster spec the init Job writes: clusterSpec, with pgParameters and the community
     chart's slow_queries merged in. */}}
{{- define "stolon.initialSpec" -}}
{{- $spec := deepCopy .Values.clusterSpec -}}
{{- $params := deepCopy (.Values.pgParameters | default dict) -}}
{{- if .Values.keeper.client_ssl.enabled -}}
{{- $_ := set $params "ssl" "on" -}}
{{- $_ := set $params "ssl_cert_file" "/etc/secrets/ssl/tls.crt" -}}
{{- $_ := set $params "ssl_key_file" "/etc/secrets/ssl/tls.key" -}}
{{- end -}}
{{- if .Values.slow_queries.enabled -}}
{{- $_ := set $params "log_min_duration_statement" (toString .Values.slow_queries.min_duration) -}}
{{- end -}}
{{- if $params -}}
{{- $_ := set $spec "pgParameters" (merge $params ($spec.pgParameters | default dict)) -}}
{{- end -}}
{{- toJson $spec -}}
{{- end -}}
