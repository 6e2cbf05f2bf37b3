"""Self-contained HTML audit reports rendered with jinja2 from reports/templates/.

Entry points (each also writes an optional JSON twin of the same data):

- ``host.render_host_report(scan, html_path, json_path=None)`` — one ``ecap.scan/1``;
- ``fleet.render_fleet_report(scans, html_path, json_path=None)`` — several scans;
- ``plan.render_plan_report(plan, html_path, json_path=None)`` — ``ecap.harden-plan/1``;
- ``session.render_session_report(jsonl_path, html_path, json_path=None)`` — a capture;
- ``host_report.write(docs, html_path)`` — what ``ecap-detect scan/report --html`` call;
- ``session.cli_render(args)`` — what ``ecap-audit report`` calls.
"""
