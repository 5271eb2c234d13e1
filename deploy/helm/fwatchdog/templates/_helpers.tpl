{{/* Names, as `helm create` makes them. */}}
{{- define "fwatchdog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fwatchdog.fullname" -}}
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

{{- define "fwatchdog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fwatchdog.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fwatchdog.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "fwatchdog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
openfaas.watchdog.<key> -> the gateway's variable: the first name of each row of
its settings table (tests/test_deploy.py checks that every row is here).
serviceToken is not in it: it goes through a Secret, as a file.
*/}}
{{- define "fwatchdog.variables" -}}
mode: WATCHDOG_MODE
fprocess: WATCHDOG_FPROCESS
upstreamUrl: WATCHDOG_UPSTREAM_URL
bufferHttp: WATCHDOG_BUFFER_HTTP
readyPath: WATCHDOG_READY_PATH
prefixLogs: WATCHDOG_PREFIX_LOGS
logBufferSize: WATCHDOG_LOG_BUFFER_SIZE
logCallid: WATCHDOG_LOG_CALLID
staticPath: WATCHDOG_STATIC_PATH
port: WATCHDOG_PORT
bindAddress: WATCHDOG_BIND_ADDRESS
metricsPort: WATCHDOG_METRICS_PORT
metricsBindAddress: WATCHDOG_METRICS_BIND_ADDRESS
readTimeout: WATCHDOG_READ_TIMEOUT
writeTimeout: WATCHDOG_WRITE_TIMEOUT
execTimeout: WATCHDOG_EXEC_TIMEOUT
maxInflight: WATCHDOG_MAX_INFLIGHT
maxQueue: WATCHDOG_MAX_QUEUE
queueTimeout: WATCHDOG_QUEUE_TIMEOUT
maxConnections: WATCHDOG_MAX_CONNECTIONS
healthcheckInterval: WATCHDOG_HEALTHCHECK_INTERVAL
writeDebug: WATCHDOG_WRITE_DEBUG
combineOutput: WATCHDOG_COMBINE_OUTPUT
contentType: WATCHDOG_CONTENT_TYPE
marshalRequest: WATCHDOG_MARSHAL_REQUEST
cgiHeaders: WATCHDOG_CGI_HEADERS
suppressLock: WATCHDOG_SUPPRESS_LOCK
strictConfig: WATCHDOG_STRICT_CONFIG
maxBodyBytes: WATCHDOG_MAX_BODY_BYTES
maxOutputBytes: WATCHDOG_MAX_OUTPUT_BYTES
spillOutputBytes: WATCHDOG_SPILL_OUTPUT_BYTES
killGrace: WATCHDOG_KILL_GRACE
onHangup: WATCHDOG_ON_HANGUP
background: WATCHDOG_BACKGROUND
functionNice: WATCHDOG_FUNCTION_NICE
serviceName: OSCAR_SERVICE_NAME
serviceTokenFile: OSCAR_SERVICE_TOKEN_FILE
oscarCheckToken: WATCHDOG_OSCAR_CHECK_TOKEN
oscarAlways200: WATCHDOG_OSCAR_ALWAYS_200
oscarRoot: WATCHDOG_OSCAR_ROOT
logLevel: WATCHDOG_LOG_LEVEL
loop: WATCHDOG_LOOP
workers: WATCHDOG_WORKERS
spawnThreads: WATCHDOG_SPAWN_THREADS
{{- end }}

{{/* Seconds in a duration ("30", "30s", "1m30s", "500ms"), rounded up. */}}
{{- define "fwatchdog.seconds" -}}
{{- $text := toString . -}}
{{- if regexMatch "^[0-9]+$" $text -}}
{{- $text -}}
{{- else -}}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]*)?(ns|us|µs|ms|s|m|h)" $text -1 -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]*)?" . -}}
{{- $unit := trimPrefix $number . -}}
{{- $total = addf $total (mulf (float64 $number) (get $units $unit)) -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}
{{- end }}

{{/* How long a pod may take to stop: the gateway's own drain, plus a margin. */}}
{{- define "fwatchdog.terminationGrace" -}}
{{- $w := .Values.openfaas.watchdog -}}
{{- $write := include "fwatchdog.seconds" $w.writeTimeout | int -}}
{{- $interval := $write -}}
{{- if ne (toString $w.healthcheckInterval) "" -}}
{{- $interval = include "fwatchdog.seconds" $w.healthcheckInterval | int -}}
{{- end -}}
{{- $grace := include "fwatchdog.seconds" $w.killGrace | int -}}
{{- add $interval $write $grace .Values.terminationGraceMarginSeconds -}}
{{- end }}

{{- define "fwatchdog.tokenSecret" -}}
{{- if .Values.oscar.existingSecret -}}
{{- .Values.oscar.existingSecret -}}
{{- else if .Values.openfaas.watchdog.serviceToken -}}
{{- include "fwatchdog.fullname" . -}}-token
{{- end -}}
{{- end }}
