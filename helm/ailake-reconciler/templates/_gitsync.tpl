{{/* Arguments shared by the git-sync init container and sidecar. */}}
{{- define "ailake-reconciler.gitSyncArgs" -}}
{{- $gs := .Values.gitSync -}}
- --repo={{ $gs.repo }}
- --ref={{ $gs.ref }}
- --root={{ $gs.root }}
- --link={{ $gs.link }}
- --period={{ $gs.period }}
- --depth={{ $gs.depth }}
{{- if $gs.https.existingSecret }}
- --password-file=/etc/git-secret/password
{{- else if $gs.ssh.existingSecret }}
- --ssh-key-file=/etc/git-secret/ssh
- --ssh-known-hosts=true
- --ssh-known-hosts-file=/etc/git-secret/known_hosts
{{- end }}
{{- range $gs.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Everything but name, image and args, shared by both git-sync containers. */}}
{{- define "ailake-reconciler.gitSyncContainerCommon" -}}
{{- $gs := .Values.gitSync -}}
env:
  - name: HOME
    value: /tmp
{{- if $gs.https.existingSecret }}
  - name: GITSYNC_USERNAME
    valueFrom:
      secretKeyRef:
        name: {{ $gs.https.existingSecret }}
        key: {{ $gs.https.usernameKey }}
{{- end }}
resources:
  {{- toYaml $gs.resources | nindent 2 }}
securityContext:
  runAsNonRoot: true
  # git-sync's own user; the checkout is world-readable, the reconciler reads it as 10001.
  runAsUser: 65533
  runAsGroup: 65533
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  privileged: false
  capabilities:
    drop:
      - ALL
  seccompProfile:
    type: RuntimeDefault
volumeMounts:
  - name: git
    mountPath: {{ $gs.root }}
  - name: git-tmp
    mountPath: /tmp
{{- if or $gs.https.existingSecret $gs.ssh.existingSecret }}
  - name: git-secret
    mountPath: /etc/git-secret
    readOnly: true
{{- end }}
{{- end }}
