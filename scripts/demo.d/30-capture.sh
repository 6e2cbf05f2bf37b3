# Step 3: capture an authorized client's HTTPS exchange, decoded, and keep the record.
# A local HTTPS service (self-signed, 127.0.0.1, ephemeral port) and a curl client
# that has loaded libssl but waits for its URLs; its PID is authorized, captured,
# and the session file is rendered back as the decoded HTTP exchange.
step "Capture: a local HTTPS service and a curl client waiting for its URLs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$DEMO/https.key" -out "$DEMO/https.crt" 2>/dev/null
python tests/tls_helpers.py serve "$DEMO/https.crt" "$DEMO/https.key" "$DEMO/https.port" &
DEMO_PIDS+=("$!")
for _ in $(seq 1 100); do [ -s "$DEMO/https.port" ] && break; sleep 0.05; done
HTTPS_PORT=$(cat "$DEMO/https.port")
mkfifo "$DEMO/curl.config"
curl -sS -k --http1.1 -H "X-Demo: ecap" -K "$DEMO/curl.config" &
CAPTURE_CLIENT=$!
DEMO_PIDS+=("$CAPTURE_CLIENT")
for _ in $(seq 1 100); do grep -q libssl /proc/$CAPTURE_CLIENT/maps 2>/dev/null && break; sleep 0.05; done
echo "HTTPS service on 127.0.0.1:$HTTPS_PORT; client: PID $CAPTURE_CLIENT (curl)"

step "Authorize that PID for module tls, text and jsonl output (15 minutes)"
show ecap-audit authorize --this-host --pid "$CAPTURE_CLIENT" --key "$DEMO/authorizer.key" \
  --module tls --mode text --mode jsonl --operator demo-operator \
  --reason "DEMO-3 capture the client's HTTPS exchange" --ttl 15m --out "$DEMO/capture-token.jwt"

step "ecap-audit capture tls: attach to that PID only; the session ends when it exits"
DEMO_SESSION="$DEMO/capture-session.jsonl"
printf '$ ecap-audit capture tls --pid %s --token %q --format jsonl --output %q\n' \
  "$CAPTURE_CLIENT" "$DEMO/capture-token.jwt" "$DEMO_SESSION"
ecap-audit capture tls --pid "$CAPTURE_CLIENT" --token "$DEMO/capture-token.jwt" \
  --format jsonl --output "$DEMO_SESSION" 2>"$DEMO/capture.stderr" &
CAPTURE_PID=$!
DEMO_PIDS+=("$CAPTURE_PID")
for _ in $(seq 1 200); do grep -q "Ctrl-C to stop" "$DEMO/capture.stderr" && break; sleep 0.05; done
cat "$DEMO/capture.stderr"

step "The client now fetches two URLs (plain text, then a gzip-encoded body)"
printf 'url = "https://127.0.0.1:%s/hello"\noutput = /dev/null\nurl = "https://127.0.0.1:%s/gzip"\noutput = /dev/null\n' \
  "$HTTPS_PORT" "$HTTPS_PORT" > "$DEMO/curl.config"
wait "$CAPTURE_CLIENT" || true
wait "$CAPTURE_PID"
tail -n 3 "$DEMO/capture.stderr"
ls -l "$DEMO_SESSION"

step "The decoded exchange, rendered from the session record"
show ecap-audit replay "$DEMO_SESSION"
export DEMO_SESSION
