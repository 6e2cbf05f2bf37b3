# Step 1: is this host ready to capture?
step "Preflight: ecap-audit doctor"
show ecap-audit doctor
