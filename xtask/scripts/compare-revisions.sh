#!/usr/bin/env bash
# Build time from clean, binary size and `cargo xtask bench render`, for two revisions
# side by side in one invocation: each in a git worktree of its own with an empty
# target directory, built one after the other on the same machine.
#   xtask/scripts/compare-revisions.sh BEFORE [AFTER]   (AFTER defaults to HEAD)
# Progress goes to stderr; the figures to stdout.
set -euo pipefail
before=${1:?usage: compare-revisions.sh BEFORE [AFTER]}
after=${2:-HEAD}
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d /tmp/tcptrace-compare.XXXXXX)
cleanup() {
  for name in before after; do
    git -C "$repo" worktree remove --force "$work/$name" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
for name in before after; do
  rev=$([ "$name" = before ] && echo "$before" || echo "$after")
  git -C "$repo" worktree add -f -q --detach "$work/$name" "$rev" >&2
done
unset CARGO_TARGET_DIR
for name in before after; do
  cd "$work/$name"
  echo "building $name ($(git rev-parse --short HEAD)) from clean" >&2
  start=$(date +%s.%N)
  cargo build -q --release -p tcptrace-agent >&2
  end=$(date +%s.%N)
  printf '%s: clean release build %.0f s, binary %s bytes\n' \
    "$name" "$(echo "$end - $start" | bc)" "$(stat -c %s target/release/tcptrace)"
done
for name in before after; do
  cd "$work/$name"
  echo "== $name: cargo xtask bench render"
  cargo run -q -p xtask -- bench render 2>/dev/null | tail -4
done
