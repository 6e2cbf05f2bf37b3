# Step 2: the authorization flow, with a throwaway key in a temporary trust dir.
step "A throwaway signing key, trusted only inside $DEMO"
show ecap-audit keygen --out "$DEMO/authorizer" --trust

step "A demo process to authorize"
sleep 300 &
DEMO_TARGET=$!
DEMO_PIDS+=("$DEMO_TARGET")
echo "demo target: PID $DEMO_TARGET ($(cat /proc/$DEMO_TARGET/comm))"

step "On the target host: describe the process (start time, exe, SHA-256)"
show ecap-audit request --pid "$DEMO_TARGET" --module tls --reason "DEMO-1 show the gate" --out "$DEMO/request.json"

step "The authorizer signs it (30 minutes, this PID only)"
show ecap-audit authorize "$DEMO/request.json" --key "$DEMO/authorizer.key" \
  --operator demo-operator --reason "DEMO-1 approved" --ttl 30m --out "$DEMO/token.jwt"

step "Verify the token for that PID"
show ecap-audit verify --token "$DEMO/token.jwt" --pid "$DEMO_TARGET"

step "Refused: the same token for a PID it does not name (exit 3)"
set +e
ecap-audit verify --token "$DEMO/token.jwt" --pid 1
echo "exit code: $?"
ecap-audit capture tls --pid 1 --token "$DEMO/token.jwt" --duration 1
echo "exit code: $?"
set -e

step "The journal recorded every decision, and its chain verifies"
show ecap-audit journal show
show ecap-audit journal verify
