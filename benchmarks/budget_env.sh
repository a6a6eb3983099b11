# Source this in a device-tool script: `cap N` prints a timeout of at most N seconds that never
# runs past $BUDGET_S since the script started (at least 1 s, so a late step still reports), and
# `step TEXT` prints a header with the seconds spent so far.
BUDGET_S=${BUDGET_S:-530}
START=$(date +%s)
cap() {
  local left=$((BUDGET_S - ($(date +%s) - START)))
  if [ "$left" -lt "$1" ]; then echo $((left > 1 ? left : 1)); else echo "$1"; fi
}
step() { echo "=== $* ($(($(date +%s) - START)) s)"; }
