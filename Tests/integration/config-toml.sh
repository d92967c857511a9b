#!/usr/bin/env bash
# Configuration (issue 13): midcomd.conf is TOML. The shipped examples and a corpus
# (Tests/config/) go through `midcomd --check --print-config` and Python's tomllib:
#   valid/        both accept, and midcomd reads exactly what tomllib reads (same JSON);
#   invalid/      not TOML: both refuse, midcomd with file:line;
#   unsupported/  valid TOML midcomd.conf never needs (floats, dates, inline tables, dotted or
#                 quoted keys, multi-line strings): midcomd refuses it by name, never guesses;
#   refused/      valid TOML but not a valid configuration (unknown key, wrong type): midcomd
#                 refuses with file:line and the message the file's first line expects.
# Also: a directory, a 2 MB file and a missing file are refused with one sentence.
source "$(dirname "$0")/lib.sh"
lab_init config

corpus="$ROOT/Tests/config"
tomllib_json() {
  $PY - "$1" <<'PY'
import json, sys, tomllib
with open(sys.argv[1], "rb") as f:
    data = f.read()
if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
try:
    print(json.dumps(tomllib.loads(data.decode("utf-8")), sort_keys=True, separators=(", ", ": "), default=str))
except Exception as e:
    print("INVALID:", e)
PY
}
check() { set +e; OUT=$("$BIN/midcomd" --check --print-config --config "$1" 2>&1); RC=$?; set -e; }
normalize() { $PY -c 'import json, sys; print(json.dumps(json.loads(sys.stdin.read()), sort_keys=True))'; }

step "the shipped examples and the valid corpus: both accept, the same values"
for file in "$ROOT"/docs/examples/*.conf "$corpus"/valid/*.conf; do
  name=${file#"$ROOT"/}
  expected=$(tomllib_json "$file")
  [[ $expected != INVALID:* ]] || fail "$name: tomllib refuses it: $expected"
  check "$file"
  expect_eq "$RC" 0 "$name: midcomd --check exit status ($OUT)"
  got=$(head -1 <<<"$OUT" | normalize)
  expect_eq "$got" "$(normalize <<<"$expected")" "$name: what midcomd read"
  echo "      $name: same"
done

step "the invalid corpus: both refuse, midcomd names the line"
for file in "$corpus"/invalid/*.conf; do
  name=${file#"$ROOT"/}
  expected=$(tomllib_json "$file")
  [[ $expected == INVALID:* ]] || fail "$name: tomllib accepts it: $expected"
  check "$file"
  expect_eq "$RC" 78 "$name: midcomd --check exit status ($OUT)"
  expect_match "$OUT" "$file:[0-9]+: " "$name: file:line"
  echo "      $name: $(sed 's/^<[0-9]>//' <<<"$OUT" | sed "s|$file|FILE|")"
done

step "valid TOML midcomd.conf does not use: refused by name"
for file in "$corpus"/unsupported/*.conf; do
  name=${file#"$ROOT"/}
  expected=$(tomllib_json "$file")
  [[ $expected != INVALID:* ]] || fail "$name: tomllib refuses it: $expected"
  check "$file"
  expect_eq "$RC" 78 "$name: midcomd --check exit status"
  expect_match "$OUT" "$file:[0-9]+: .* is valid TOML but not used in midcomd.conf" "$name: refused by name"
  echo "      $name: $(sed 's/^<[0-9]>//' <<<"$OUT" | sed "s|$file|FILE|")"
done

step "valid TOML but not a valid configuration: refused with the line and the fix"
for file in "$corpus"/refused/*.conf; do
  name=${file#"$ROOT"/}
  [[ $(tomllib_json "$file") != INVALID:* ]] || fail "$name: tomllib refuses it"
  check "$file"
  expect_eq "$RC" 78 "$name: midcomd --check exit status"
  expect_match "$OUT" "$(sed -n 's/^# expect: //p' "$file")" "$name: message"
  echo "      $name: $(sed 's/^<[0-9]>//' <<<"$OUT" | sed "s|$file|FILE|")"
done

step "not a configuration file at all"
check /etc
expect_eq "$RC" 78 "a directory"; expect_match "$OUT" "/etc: is a directory, not a file" "directory message"
head -c 2000000 /dev/zero | tr '\0' '#' >"$LAB_DIR/big.conf"
check "$LAB_DIR/big.conf"
expect_eq "$RC" 78 "a 2 MB file"; expect_match "$OUT" "larger than 1048576 octets" "size message"
check "$LAB_DIR/missing.conf"
expect_eq "$RC" 78 "a missing file"; expect_match "$OUT" "cannot read: No such file or directory" "missing file message"
printf '\xef\xbb\xbf[daemon]\nname = "bom"\n' >"$LAB_DIR/bom.conf"
check "$LAB_DIR/bom.conf"
expect_eq "$RC" 0 "a file starting with a UTF-8 byte-order mark ($OUT)"
echo "config-toml: all checks passed"
