{{/* Environment shared by the controller's init and serve containers. */}}
{{- define "meshsec.controller.env" -}}
{{- $c := .Values.controller -}}
{{- $host := include "meshsec.controller.host" . -}}
{{- /* MESHSEC_ETCD first: kustomize overlays patch it and their merge puts patched entries first. */}}
- name: MESHSEC_ETCD
  value: {{ include "meshsec.etcd.endpoints" . | quote }}
- name: MESHSEC_LOG_LEVEL
  value: {{ $c.logLevel | quote }}
- name: MESHSEC_STATE_DIR
  value: /var/lib/meshsec/controller
{{- if .Values.etcd.tls.enabled }}
- name: MESHSEC_ETCD_CA_FILE
  value: /etc/meshsec/etcd-tls/ca.crt
- name: MESHSEC_ETCD_CERT_FILE
  value: /etc/meshsec/etcd-tls/tls.crt
- name: MESHSEC_ETCD_KEY_FILE
  value: /etc/meshsec/etcd-tls/tls.key
{{- end }}
- name: MESHSEC_SOCKET
  value: ""
- name: MESHSEC_ENROLL_SOCKET
  value: ""
- name: MESHSEC_LISTEN
  value: {{ printf "%s:%d" $c.listenHost (int $c.grpcPort) | quote }}
- name: MESHSEC_ENROLL_LISTEN
  value: {{ printf "%s:%d" $c.listenHost (int $c.enrollPort) | quote }}
- name: MESHSEC_HEALTH_LISTEN
  value: {{ printf "%s:%d" $c.listenHost (int $c.healthPort) | quote }}
- name: MESHSEC_SERVER_NAMES
  value: {{ join "," (concat (list (printf "%s-controller" (include "meshsec.fullname" .)) $host (printf "%s.cluster.local" $host)) $c.extraServerNames) | quote }}
- name: MESHSEC_REPLICA
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{- define "meshsec.controller.volumeMounts" -}}
- name: state
  mountPath: /var/lib/meshsec/controller
- name: tmp
  mountPath: /tmp
{{- if .Values.etcd.tls.enabled }}
- name: etcd-tls
  mountPath: /etc/meshsec/etcd-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Container securityContext for everything that needs no privilege (controller, etcd). */}}
{{- define "meshsec.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}
