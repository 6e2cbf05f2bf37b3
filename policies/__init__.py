"""Resource package: shipped AppArmor profiles and abstractions (policies/apparmor/)."""
