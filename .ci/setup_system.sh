#!/bin/bash
# System packages some tests use: Slurm and munge (tests/test_slurm.py runs a local one-node cluster) and the
# ShellCheck linter (tests/test_submit.py). Installs only what is missing, only as root with apt-get, quietly.
# It never fails CI: without apt (or root, or network) it says so and the tests that need these skip with
# their reason.
set -u

need=()
command -v slurmctld > /dev/null 2>&1 || [ -x /usr/sbin/slurmctld ] || need+=(slurm-wlm)
command -v munged > /dev/null 2>&1 || [ -x /usr/sbin/munged ] || need+=(munge)
command -v shellcheck > /dev/null 2>&1 || need+=(shellcheck)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
  echo "setup_system: not installing ${need[*]} (needs root and apt-get); the tests that use them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } > /tmp/setup_system.log 2>&1
then
  echo "setup_system: installed ${need[*]}"
else
  echo "setup_system: apt-get could not install ${need[*]} (log: /tmp/setup_system.log); those tests will skip" >&2
fi
exit 0
