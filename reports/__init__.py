"""Self-contained HTML audit reports rendered with jinja2 from reports/templates/."""
