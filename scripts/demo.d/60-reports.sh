# Step 6: the HTML audit reports — self-contained files to hand to an auditor.
step "Reports: the host report from this host's scan"
REPORT_SCAN="$DEMO/scan.json"
if [ -f "$REPORT_SCAN" ]; then
  show ecap-detect report "$REPORT_SCAN" --html "$DEMO/host-report.html"
else
  # exit 1 only means "findings at or above the threshold": the report is written
  printf '$ ecap-detect scan --json %q --html %q\n' "$DEMO/report-scan.json" "$DEMO/host-report.html"
  ecap-detect scan --json "$DEMO/report-scan.json" --html "$DEMO/host-report.html" >/dev/null \
    || [ $? -eq 1 ]
fi

# The capture step's JSONL: $DEMO_SESSION, else the newest file under $DEMO whose
# first record is an ecap.capture/1 header.
REPORT_SESSION="${DEMO_SESSION:-}"
if [ -z "$REPORT_SESSION" ]; then
  while IFS= read -r f; do
    if grep -q '"ecap.capture/1"' < <(head -c 300 "$f"); then REPORT_SESSION="$f"; break; fi
  done < <(find "$DEMO" -maxdepth 2 -name '*.jsonl' -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)
fi
if [ -n "$REPORT_SESSION" ] && [ -f "$REPORT_SESSION" ]; then
  step "The capture session report: who authorized what, scope, traffic, journal chain"
  show ecap-audit report "$REPORT_SESSION" --html "$DEMO/session-report.html" \
    --json "$DEMO/session-report.json"
fi

step "Reports written (open them in any browser; they load nothing from the network)"
for f in host-report.html session-report.html session-report.json harden-plan.html; do
  if [ -f "$DEMO/$f" ]; then printf '  %s\n' "$DEMO/$f"; fi
done
