# Step 5: hardening — the policy set for this host, tailored to its scan, validated by
# the real tools (apparmor_parser, checkmodule, libseccomp, auditctl/ausyscall,
# kubernetes-validate).
step "Hardening: which control stops which attacker"
ecap-harden --help | sed -n '/^controls/,$p'

HARDEN_SCAN="$DEMO/scan.json"
if [ ! -f "$HARDEN_SCAN" ]; then
  HARDEN_SCAN="$DEMO/harden-scan.json"
  step "A scan of this host to tailor the policies to (ecap-detect scan --json)"
  # exit 1 only means "findings at or above the threshold": the JSON is written
  ecap-detect scan --json "$HARDEN_SCAN" >/dev/null || [ $? -eq 1 ]
  echo "wrote $HARDEN_SCAN"
fi

step "Generate the policy set for this host, tailored to its scan"
HARDEN_APPS=()
command -v curl >/dev/null && HARDEN_APPS+=(--app "$(command -v curl)")
show ecap-harden generate --from "$HARDEN_SCAN" --profile balanced --out "$DEMO/harden" "${HARDEN_APPS[@]}"

step "Validate every generated file with the real tools (audit rules loaded, then removed)"
show ecap-harden validate "$DEMO/harden"

step "Check the live host against the strict profile (exit 1 lists what is missing)"
set +e
ecap-harden check --profile strict
echo "exit code: $?"
set -e
step "The plan as an HTML report (threat model, one-way warnings, files inline)"
show ecap-harden report "$DEMO/harden" --html "$DEMO/harden-plan.html"
