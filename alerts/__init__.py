"""Alert and recording rules as code.

``tools/generate.py`` writes :mod:`alerts.stack`'s fixed rules to ``alerts/generated/*.yaml``
(mirrored into the chart's ``files/rules/``) and :mod:`alerts.slo`'s per-SLO rule template to the
chart's ``templates/generated/_slo_rules.tpl``, which Helm renders once per entry of
``alerting.slos``. See ``alerts/README.md`` for the split and ``docs/runbooks.md`` for every alert.
"""
