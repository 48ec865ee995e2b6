"""Dashboards as code: Grafana builders and Kibana saved objects for rpcscope.

Modules here are sources; ``tools/generate.py`` turns every module defining
``build_dashboard()`` into ``dashboards/generated/<module>.json`` and every module defining
``build_saved_objects()`` into ``dashboards/kibana/<module>.ndjson``.
"""
