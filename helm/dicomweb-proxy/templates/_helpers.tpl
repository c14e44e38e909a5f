{{/*
Naming, labels, the derived --cache-size, and the proxy container shared by the
Deployment (standalone) and the "dicomweb-proxy.sidecar" template (parent charts).

Templates that serve both this chart and a parent chart take a dict (release: the release
name, values: this chart's values, ...) and read the values as $values, never .Values,
because in a parent chart .Values is the parent's.
*/}}

{{- define "dicomweb-proxy.name" -}}
{{- default "dicomweb-proxy" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-dicomweb-proxy" unless overridden; arguments: dict release values. */}}
{{- define "dicomweb-proxy.fullnameFor" -}}
{{- $values := .values }}
{{- if $values.fullnameOverride }}
{{- $values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "dicomweb-proxy" $values.nameOverride }}
{{- if contains $name .release }}
{{- .release | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .release $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dicomweb-proxy.fullname" -}}
{{- include "dicomweb-proxy.fullnameFor" (dict "release" .Release.Name "values" .Values) }}
{{- end }}

{{- define "dicomweb-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dicomweb-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dicomweb-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dicomweb-proxy.labels" -}}
helm.sh/chart: {{ include "dicomweb-proxy.chart" . }}
{{ include "dicomweb-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dicomweb-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dicomweb-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding credentials; arguments: dict release values. */}}
{{- define "dicomweb-proxy.secretNameFor" -}}
{{- default (include "dicomweb-proxy.fullnameFor" .) .values.existingSecret }}
{{- end }}

{{/*
--cache-size: cache.maxSize, or cache.sizePercent of the volume size, in MiB, so that
spool, dead letter, the index and the one entry in flight fit beside the cache and the
emptyDir is never evicted for exceeding its sizeLimit.  Argument: the values.
*/}}
{{- define "dicomweb-proxy.cacheSize" -}}
{{- if .cache.maxSize }}
{{- .cache.maxSize }}
{{- else }}
{{- $number := regexFind "^[0-9]+" .cache.size | int64 }}
{{- $unit := regexFind "(Mi|Gi|Ti)$" .cache.size }}
{{- $mib := mul $number (get (dict "Mi" 1 "Gi" 1024 "Ti" 1048576) $unit) }}
{{- printf "%dMiB" (div (mul $mib .cache.sizePercent) 100) }}
{{- end }}
{{- end }}

{{/* Does this configuration need the credentials volume?  Argument: the values. */}}
{{- define "dicomweb-proxy.needsSecret" -}}
{{- $auth := .upstream.auth }}
{{- $googleKey := and (eq $auth "google") (or .upstream.google.serviceAccountKey .upstream.google.existingSecretHasKey) }}
{{- $azureSecret := and (eq $auth "azure") (or .upstream.azure.clientSecret .upstream.azure.existingSecretHasClientSecret) }}
{{- if or (has $auth (list "basic" "bearer" "oauth2")) $googleKey $azureSecret (ne .inbound.auth "none") .admin.token .existingSecretHasAdminToken }}true{{ end }}
{{- end }}

{{/*
Non-secret options as DICOMWEB_PROXY_* variables (the ConfigMap's data), proxy.extraEnv
overriding the chart's own.  Credentials are never here: only the paths of the files the
Secret is mounted as.  Argument: the values.
*/}}
{{- define "dicomweb-proxy.env" -}}
{{- $env := include "dicomweb-proxy.envBase" . | fromYaml }}
{{- range $key, $value := .proxy.extraEnv }}
{{- $_ := set $env $key (toString $value) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{- define "dicomweb-proxy.envBase" -}}
{{- $secrets := "/etc/dicomweb-proxy/secrets" }}
DICOMWEB_PROXY_UPSTREAM_URL: {{ required "upstream.url is required (the DICOMweb origin, e.g. http://orthanc:8042/dicom-web)" .upstream.url | quote }}
DICOMWEB_PROXY_UPSTREAM_AUTH: {{ .upstream.auth | quote }}
DICOMWEB_PROXY_UPSTREAM_TIMEOUT: {{ .upstream.timeout | quote }}
DICOMWEB_PROXY_UPSTREAM_CONNECTIONS: {{ .upstream.connections | quote }}
DICOMWEB_PROXY_UPSTREAM_INSECURE: {{ .upstream.insecure | quote }}
{{- if .upstream.caBundle }}
DICOMWEB_PROXY_UPSTREAM_CA_FILE: "/etc/dicomweb-proxy/ca/ca.crt"
{{- end }}
{{- if eq .upstream.auth "basic" }}
DICOMWEB_PROXY_UPSTREAM_USERNAME: {{ required "upstream.username is required for upstream.auth=basic" .upstream.username | quote }}
DICOMWEB_PROXY_UPSTREAM_PASSWORD_FILE: {{ printf "%s/upstream-password" $secrets | quote }}
{{- else if eq .upstream.auth "bearer" }}
DICOMWEB_PROXY_UPSTREAM_TOKEN_FILE: {{ printf "%s/upstream-token" $secrets | quote }}
{{- else if eq .upstream.auth "oauth2" }}
DICOMWEB_PROXY_OAUTH2_TOKEN_URL: {{ required "upstream.oauth2.tokenUrl is required for upstream.auth=oauth2" .upstream.oauth2.tokenUrl | quote }}
DICOMWEB_PROXY_OAUTH2_CLIENT_ID: {{ required "upstream.oauth2.clientId is required for upstream.auth=oauth2" .upstream.oauth2.clientId | quote }}
DICOMWEB_PROXY_OAUTH2_CLIENT_SECRET_FILE: {{ printf "%s/oauth2-client-secret" $secrets | quote }}
{{- if .upstream.oauth2.scope }}
DICOMWEB_PROXY_OAUTH2_SCOPE: {{ .upstream.oauth2.scope | quote }}
{{- end }}
{{- else if eq .upstream.auth "google" }}
{{- if or .upstream.google.serviceAccountKey .upstream.google.existingSecretHasKey }}
DICOMWEB_PROXY_GOOGLE_CREDENTIALS_FILE: {{ printf "%s/google-credentials.json" $secrets | quote }}
{{- end }}
{{- if .upstream.google.scope }}
DICOMWEB_PROXY_GOOGLE_SCOPE: {{ .upstream.google.scope | quote }}
{{- end }}
{{- else if eq .upstream.auth "azure" }}
{{- if .upstream.azure.tenantId }}
DICOMWEB_PROXY_AZURE_TENANT_ID: {{ .upstream.azure.tenantId | quote }}
{{- end }}
{{- if .upstream.azure.clientId }}
DICOMWEB_PROXY_AZURE_CLIENT_ID: {{ .upstream.azure.clientId | quote }}
{{- end }}
{{- if or .upstream.azure.clientSecret .upstream.azure.existingSecretHasClientSecret }}
DICOMWEB_PROXY_AZURE_CLIENT_SECRET_FILE: {{ printf "%s/azure-client-secret" $secrets | quote }}
{{- end }}
{{- else if eq .upstream.auth "aws" }}
{{- if .upstream.aws.region }}
DICOMWEB_PROXY_AWS_REGION: {{ .upstream.aws.region | quote }}
{{- end }}
{{- end }}
DICOMWEB_PROXY_INBOUND_AUTH: {{ .inbound.auth | quote }}
{{- if eq .inbound.auth "basic" }}
DICOMWEB_PROXY_INBOUND_HTPASSWD: {{ printf "%s/inbound-htpasswd" $secrets | quote }}
{{- else if eq .inbound.auth "bearer" }}
DICOMWEB_PROXY_INBOUND_TOKENS_FILE: {{ printf "%s/inbound-tokens" $secrets | quote }}
{{- end }}
{{- if or .admin.token .existingSecretHasAdminToken }}
DICOMWEB_PROXY_ADMIN_TOKEN_FILE: {{ printf "%s/admin-token" $secrets | quote }}
{{- end }}
DICOMWEB_PROXY_BASE_PATH: {{ .proxy.basePath | quote }}
{{- if .proxy.publicUrl }}
DICOMWEB_PROXY_PUBLIC_URL: {{ .proxy.publicUrl | quote }}
{{- end }}
DICOMWEB_PROXY_TRUST_FORWARDED: {{ .proxy.trustForwarded | quote }}
DICOMWEB_PROXY_DATA_DIR: "/var/cache/dicomweb-proxy"
DICOMWEB_PROXY_CACHE_SIZE: {{ include "dicomweb-proxy.cacheSize" . | quote }}
DICOMWEB_PROXY_NO_CACHE: {{ .proxy.noCache | quote }}
DICOMWEB_PROXY_METADATA_TTL: {{ .proxy.metadataTtl | quote }}
DICOMWEB_PROXY_FINALIZED_AFTER: {{ .proxy.finalizedAfter | quote }}
DICOMWEB_PROXY_QIDO_TTL: {{ .proxy.qidoTtl | quote }}
DICOMWEB_PROXY_STALE_IF_ERROR: {{ .proxy.staleIfError | quote }}
{{- if .proxy.corsOrigins }}
DICOMWEB_PROXY_CORS_ORIGINS: {{ join "," .proxy.corsOrigins | quote }}
{{- end }}
DICOMWEB_PROXY_MAX_BODY: {{ .proxy.maxBody | quote }}
DICOMWEB_PROXY_PREFETCH: {{ .proxy.prefetch | quote }}
DICOMWEB_PROXY_LOG_FORMAT: {{ .proxy.logFormat | quote }}
DICOMWEB_PROXY_LOG_LEVEL: {{ .proxy.logLevel | quote }}
DICOMWEB_PROXY_SHUTDOWN_GRACE: {{ .proxy.shutdownGrace | quote }}
DICOMWEB_PROXY_STOW_MAX_INSTANCES: {{ .proxy.stow.maxInstances | quote }}
DICOMWEB_PROXY_STOW_MAX_BYTES: {{ .proxy.stow.maxBytes | quote }}
DICOMWEB_PROXY_STOW_CONCURRENCY: {{ .proxy.stow.concurrency | quote }}
DICOMWEB_PROXY_STOW_RETRIES: {{ .proxy.stow.retries | quote }}
{{- end }}

{{/*
A probe: httpGet on the pod IP (standalone) or, for a sidecar bound to 127.0.0.1 where
the kubelet cannot reach it, the image's python one-liner.  Arguments: dict path probe
localhost port.
*/}}
{{- define "dicomweb-proxy.probe" -}}
{{- if .localhost }}
exec:
  command:
    - python
    - -c
    - {{ printf "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%d%s', timeout=%d)" (int .port) .path (int .probe.timeoutSeconds) | quote }}
{{- else }}
httpGet:
  path: {{ .path }}
  port: http
{{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/*
The proxy container.  Arguments: dict release values appVersion (the image tag unless
image.tag is set) localhost (true: bind 127.0.0.1, the sidecar; false: 0.0.0.0 behind a Service)
and optionally publicUrl (scale-out: every replica rewrites URLs to the balancer's).
*/}}
{{- define "dicomweb-proxy.container" -}}
{{- $values := .values }}
{{- $fullname := include "dicomweb-proxy.fullnameFor" . }}
{{- $host := ternary "127.0.0.1" "0.0.0.0" .localhost }}
name: dicomweb-proxy
{{- $tag := required "dicomweb-proxy image.tag is required" (default .appVersion $values.image.tag | toString) }}
image: {{ printf "%s:%s" $values.image.repository $tag | quote }}
imagePullPolicy: {{ $values.image.pullPolicy }}
args: ["serve"]
{{- if and .localhost $values.sidecar.native }}
restartPolicy: Always
{{- end }}
envFrom:
  - configMapRef:
      name: {{ $fullname }}
env:
  - name: DICOMWEB_PROXY_LISTEN
    value: {{ printf "%s:%d" $host (int $values.proxy.port) | quote }}
  {{- with .publicUrl }}
  - name: DICOMWEB_PROXY_PUBLIC_URL
    value: {{ . | quote }}
  {{- end }}
  - name: DICOMWEB_PROXY_WORKERS
  {{- if gt (int $values.proxy.workers) 0 }}
    value: {{ $values.proxy.workers | quote }}
  {{- else }}
    valueFrom:
      resourceFieldRef:
        resource: limits.cpu
        divisor: "1"
  {{- end }}
ports:
  - name: http
    containerPort: {{ $values.proxy.port }}
    protocol: TCP
livenessProbe:
  {{- include "dicomweb-proxy.probe" (dict "path" "/healthz" "probe" $values.probes.liveness "localhost" .localhost "port" $values.proxy.port) | trim | nindent 2 }}
readinessProbe:
  {{- include "dicomweb-proxy.probe" (dict "path" $values.probes.readiness.path "probe" $values.probes.readiness "localhost" .localhost "port" $values.proxy.port) | trim | nindent 2 }}
resources:
  {{- toYaml $values.resources | nindent 2 }}
securityContext:
  {{- toYaml $values.securityContext | nindent 2 }}
volumeMounts:
  - name: dicomweb-proxy-cache
    mountPath: /var/cache/dicomweb-proxy
  - name: dicomweb-proxy-tmp
    mountPath: /tmp
  {{- if include "dicomweb-proxy.needsSecret" $values }}
  - name: dicomweb-proxy-secrets
    mountPath: /etc/dicomweb-proxy/secrets
    readOnly: true
  {{- end }}
  {{- if $values.upstream.caBundle }}
  - name: dicomweb-proxy-ca
    mountPath: /etc/dicomweb-proxy/ca
    readOnly: true
  {{- end }}
{{- end }}

{{/*
The pod volumes the container mounts.  Secrets are mounted as a directory, never with
subPath, so a rotated token file is seen by --upstream-token-file.  Arguments: dict release
values fileMode (of the secret files: 0440 with the chart's fsGroup; 0444 for a sidecar,
where the parent's pod may set no fsGroup and only this container mounts the volume), and
optionally claimTemplate (true: the cache volume comes from the StatefulSet's
volumeClaimTemplates, so the pod lists none).
*/}}
{{- define "dicomweb-proxy.volumes" -}}
{{- $values := .values }}
{{- $fullname := include "dicomweb-proxy.fullnameFor" . }}
{{- if not .claimTemplate }}
- name: dicomweb-proxy-cache
{{- if $values.cache.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default $fullname $values.cache.persistence.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ $values.cache.size }}
    {{- if $values.cache.medium }}
    medium: {{ $values.cache.medium }}
    {{- end }}
{{- end }}
{{- end }}
- name: dicomweb-proxy-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "dicomweb-proxy.needsSecret" $values }}
- name: dicomweb-proxy-secrets
  secret:
    secretName: {{ include "dicomweb-proxy.secretNameFor" . }}
    defaultMode: {{ .fileMode }}
{{- end }}
{{- if $values.upstream.caBundle }}
- name: dicomweb-proxy-ca
  configMap:
    name: {{ printf "%s-ca" $fullname }}
{{- end }}
{{- end }}

{{/*
Sidecar mode: the proxy container for a parent chart's pod spec.  The parent lists this
chart as a dependency with `dicomweb-proxy: {standalone: false, upstream: {...}}` and
includes, with its own top context:

  containers:
    - name: app
      env: [{name: DICOMWEB_URL, value: http://localhost:8080/dicom-web}]
    {{- include "dicomweb-proxy.sidecar" . | nindent 4 }}
  volumes:
    {{- include "dicomweb-proxy.sidecarVolumes" . | nindent 4 }}

The container binds 127.0.0.1 only: the application reaches it, nothing else does.
The image tag defaults to this chart's appVersion, read through .Subcharts (Helm 3.8+).
*/}}
{{- define "dicomweb-proxy.sidecar" -}}
{{- $appVersion := "" }}
{{- with .Subcharts }}
{{- with (index . "dicomweb-proxy") }}
{{- $appVersion = .Chart.AppVersion }}
{{- end }}
{{- end }}
- {{ include "dicomweb-proxy.container" (dict "release" .Release.Name "values" (index .Values "dicomweb-proxy") "appVersion" $appVersion "localhost" true) | trim | indent 2 | trim }}
{{- end }}

{{- define "dicomweb-proxy.sidecarVolumes" -}}
{{- include "dicomweb-proxy.volumes" (dict "release" .Release.Name "values" (index .Values "dicomweb-proxy") "fileMode" "0444") | trim }}
{{- end }}

{{/*
Scale-out: the replicas' headless Service name, and the URL clients reach the balancer
at (proxy.publicUrl, else the balancer's Service inside the cluster), which every replica
rewrites URLs to (SPEC section 7).
*/}}
{{- define "dicomweb-proxy.headlessName" -}}
{{- printf "%s-headless" (include "dicomweb-proxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dicomweb-proxy.balancerUrl" -}}
{{- if .Values.proxy.publicUrl }}
{{- .Values.proxy.publicUrl }}
{{- else }}
{{- printf "http://%s.%s.svc.%s:%d%s" (include "dicomweb-proxy.fullname" .) .Release.Namespace .Values.scaleOut.balancer.clusterDomain (int .Values.service.port) .Values.proxy.basePath }}
{{- end }}
{{- end }}

{{/*
The balancer's haproxy.cfg: deploy/balancers/haproxy.cfg (the file the fleet test runs)
with one server per StatefulSet pod, addressed by its stable DNS name and resolved at run
time.  Server ids 1..N follow the pod ordinals, so pod <fullname>-2 always owns the same
points on the ring, whatever its IP; tests/test_deployment.py checks that the directives
match the reference file's.
*/}}
{{- define "dicomweb-proxy.haproxyConfig" -}}
{{- $fullname := include "dicomweb-proxy.fullname" . }}
{{- $balancer := .Values.scaleOut.balancer }}
{{- $servers := ternary .Values.autoscaling.maxReplicas .Values.replicaCount .Values.autoscaling.enabled | int }}
{{- $depth := add 2 (len (compact (splitList "/" .Values.proxy.basePath))) }}
{{- $domain := printf "%s.%s.svc.%s" (include "dicomweb-proxy.headlessName" .) .Release.Namespace $balancer.clusterDomain -}}
global
    log stdout format raw local0 notice

resolvers kubernetes
    parse-resolv-conf
    hold valid 10s
    hold nx 5s
    hold obsolete 5s

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    timeout http-request 30s
    timeout http-keep-alive 60s
    timeout queue 30s
    timeout check 5s
    retries {{ $balancer.retries }}
    option redispatch 1
    retry-on conn-failure empty-response 503

frontend dicomweb
    bind :{{ $balancer.port }}
    option forwardfor
    http-request disable-l7-retry unless METH_GET
    acl names_a_study path_beg {{ printf "%s/studies/" .Values.proxy.basePath }}
    use_backend by-study if names_a_study
    default_backend any-replica

backend by-study
    balance uri depth {{ $depth }} path-only
    hash-type consistent
    option httpchk
    http-check send meth GET uri {{ .Values.probes.readiness.path }}
    http-check expect status 200
    http-response set-header X-Served-By %[srv_name]
    default-server check inter {{ $balancer.healthCheck.interval }} fall {{ $balancer.healthCheck.fall }} rise {{ $balancer.healthCheck.rise }} weight {{ $balancer.weight }} resolvers kubernetes init-addr last,libc,none
{{- range $i := until $servers }}
    server proxy-{{ $i }} {{ printf "%s-%d.%s:%d" $fullname $i $domain (int $.Values.proxy.port) }} id {{ add1 $i }}
{{- end }}

backend any-replica
    balance roundrobin
    http-response set-header X-Served-By %[srv_name]
    default-server resolvers kubernetes init-addr last,libc,none
{{- range $i := until $servers }}
    server proxy-{{ $i }} {{ printf "%s-%d.%s:%d" $fullname $i $domain (int $.Values.proxy.port) }} track by-study/proxy-{{ $i }}
{{- end }}

frontend stats
    bind :8404
    monitor-uri /healthz
    stats enable
    stats uri /stats
    http-request use-service prometheus-exporter if { path /metrics }
{{- end }}
