#!/usr/bin/env bash
# Operations, command-line conventions (issue 13): `--version` on midcomd, midctl and csp; usage
# errors exit with 2 as each tool's help says (not the argument parser's 64) and name the tool;
# an unknown command says "unknown command" and lists the commands.
source "$(dirname "$0")/lib.sh"
lab_init cli

run() { set +e; out=$("$@" 2>&1); rc=$?; set -e; indent <<<"$out"; }

step "--version"
for tool in midcomd midctl csp; do
  run "$BIN/$tool" --version
  expect_eq "$rc" 0 "$tool --version exit status"
  expect_match "$out" "^[0-9]+\.[0-9]+\.[0-9]+$" "$tool --version output"
done
expect_eq "$("$BIN/midcomd" --version)" "$("$BIN/csp" --version)" "one version for all tools"

step "usage errors exit with 2 and name the tool"
run "$BIN/midcomd" --no-such-option
expect_eq "$rc" 2 "midcomd with an unknown option"; expect_match "$out" "^midcomd: Unknown option '--no-such-option'" "midcomd message"
run "$BIN/csp" setup
expect_eq "$rc" 2 "csp setup without arguments"; expect_match "$out" "^csp: Missing expected argument '<proto>'" "csp message"
run "$BIN/midctl" show
expect_eq "$rc" 2 "midctl show without an id"; expect_match "$out" "^midctl: " "midctl message"
expect_match "$("$BIN/midcomd" --help)" "2 usage" "midcomd --help documents 2"
expect_match "$("$BIN/csp" --help)" "2 usage error" "csp --help documents 2"

step "every command's help reads as prose: no line ends in a stray backslash (a doubled line continuation)"
for tool in csp midctl midrelayd midcomd; do
  commands=$("$BIN/$tool" --help 2>&1 | sed -n '/^SUBCOMMANDS:/,/^$/p' | awk 'NR > 1 && NF { print $1 }')
  for command in "" $commands; do
    # shellcheck disable=SC2086
    help=$("$BIN/$tool" $command --help 2>&1 || true)
    expect_no_match "$help" '\\$' "$tool $command --help"
  done
done

step "an unknown command says so and lists the commands"
run "$BIN/midctl" monitorr
expect_eq "$rc" 2 "midctl monitorr"
expect_match "$out" "^midctl: unknown command 'monitorr'; the commands are: sessions, show, .*reload" "midctl message"
run "$BIN/midctl" --socket /nonexistent frobnicate
expect_eq "$rc" 2 "midctl --socket X frobnicate"
expect_match "$out" "unknown command 'frobnicate'" "an option's value is not taken for a command"
run "$BIN/csp" frobnicate
expect_eq "$rc" 2 "csp frobnicate"
expect_match "$out" "^csp: unknown command 'frobnicate'; the commands are: setup, refresh, .*keygen" "csp message"

step "completion scripts, the option's value given either way"
for tool in midctl csp; do
  for form in "--generate-completion-script bash" "--generate-completion-script=bash"; do
    run "$BIN/$tool" $form
    expect_eq "$rc" 0 "$tool $form"
    expect_match "$out" "complete .*-F _$tool $tool" "$tool $form: a bash completion"
  done
done

step "a command that cannot reach midcomd exits 3 with one sentence"
run "$BIN/midctl" --socket "$LAB_DIR/none.sock" status
expect_eq "$rc" 3 "midctl without a daemon"
expect_match "$out" "^midctl: midcomd is not running: no control socket at " "message"
echo "ops-cli: all checks passed"
