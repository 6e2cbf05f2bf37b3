# Step 4: find every eBPF program hooking plaintext — and tell ours from a rogue one.
# An authorized ecap capture (info) and a rogue bpftrace uprobe on SSL_write
# (critical) run side by side; the scan names both, with owners and victims.
step "Detect: a TLS process, an authorized capture of it, and a rogue bpftrace sniffer"
python3 -c "import ssl, time; time.sleep(300)" &
DETECT_VICTIM=$!
DEMO_PIDS+=("$DETECT_VICTIM")
sleep 0.5
show ecap-audit authorize --this-host --pid "$DETECT_VICTIM" --key "$DEMO/authorizer.key" \
  --module tls --operator demo-operator --reason "DEMO-4 authorized capture" --ttl 30m \
  --out "$DEMO/detect-token.jwt"
ecap-audit capture tls --pid "$DETECT_VICTIM" --token "$DEMO/detect-token.jwt" \
  --output "$DEMO/detect-capture.txt" --quiet &
DETECT_CAPTURE=$!
DEMO_PIDS+=("$DETECT_CAPTURE")
bpftrace -e 'uprobe:/usr/lib/x86_64-linux-gnu/libssl.so.3:SSL_write { @bytes = count(); }' \
  >/dev/null 2>&1 &
DETECT_ROGUE=$!
DEMO_PIDS+=("$DETECT_ROGUE")
for _ in $(seq 1 60); do  # wait until the capture registered and bpftrace attached
  if ls "$ECAP_RUN_DIR"/sessions/*.json >/dev/null 2>&1 \
     && grep -q 'anon_inode:\[perf_event\]' <(ls -l /proc/"$DETECT_ROGUE"/fd 2>/dev/null); then
    break
  fi
  sleep 0.5
done

step "ecap-detect scan: the capture is authorized (info), bpftrace is rogue (critical, exit 1)"
printf '$ ecap-detect scan --json %q --no-inventory\n' "$DEMO/scan.json"
set +e
ecap-detect scan --json "$DEMO/scan.json" --no-inventory
echo "exit code: $? (1 = findings at or above --fail-on high)"
set -e

step "Stop both; the rescan shows neither"
kill "$DETECT_ROGUE" "$DETECT_CAPTURE" 2>/dev/null || true
wait "$DETECT_ROGUE" "$DETECT_CAPTURE" 2>/dev/null || true
# bpftrace may use tracefs events named after its pid; remove any it left behind
if [ -w /sys/kernel/tracing/uprobe_events ]; then
  for ev in $(grep -o "uprobes/[^ ]*_bcc_${DETECT_ROGUE}\b" /sys/kernel/tracing/uprobe_events); do
    echo "-:$ev" >> /sys/kernel/tracing/uprobe_events || true
  done
fi
set +e
ecap-detect scan --json "$DEMO/scan-after.json" --no-inventory --fail-on critical >/dev/null
echo "rescan exit code: $? (0 = no critical findings left)"
set -e
python3 - "$DEMO/scan.json" "$DEMO/scan-after.json" <<'PY'
import json, sys
before, after = (json.load(open(p)) for p in sys.argv[1:3])
for label, doc in (("during", before), ("after", after)):
    hooks = [f for f in doc["findings"] if f["category"] == "plaintext-hook"]
    shown = "; ".join(f"{f['severity']}: " + json.dumps(f["title"], ensure_ascii=False)[1:-1] for f in hooks)
    print(f"{label}: {shown or 'no plaintext hooks'}")
PY
