#!/usr/bin/env bash
# Operations, metrics (issue 13): with `[metrics] listen`, midcomd serves GET /metrics in the
# Prometheus text format; scraped with curl and parsed by the reference parser (Python's
# prometheus_client): the engine's counters follow what happened (admitted, rejected), sessions
# are counted by state and origin, each rule's hits, the nft batch latency and signaling parse
# histograms fill. Without [metrics] nothing listens.
#
#   client 10.200.1.2 ── gw (midcomd gw1, metrics on 127.0.0.1:9727) ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init metrics

step "lab: client — gw — server; metrics on the gateway's loopback"
lab_basic
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"

[[rule]]
name = "no-telnet"
proto = "tcp"
port = 23
action = "reject"

[metrics]
listen = "127.0.0.1:9727"
CONF
)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
for _ in $(seq 1 50); do in_ns gw curl -s -o /dev/null http://127.0.0.1:9727/metrics && break; sleep 0.1; done

csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 60 --responder csp
expect_eq "$CSP_RC" 0 "admitted"
csp_run client setup tcp 10.200.2.2:23 --sport 4001 --responder csp
expect_eq "$CSP_RC" 1 "rejected"

step "scrape: HTTP 200, the Prometheus text format"
code=$(in_ns gw curl -s -o "$LAB_DIR/metrics.txt" -w '%{http_code} %{content_type}' http://127.0.0.1:9727/metrics)
expect_match "$code" "^200 text/plain; version=0\.0\.4" "status and content type"
$PY - "$LAB_DIR/metrics.txt" >"$LAB_DIR/parsed.txt" <<'PY' || fail "prometheus_client could not parse the exposition: $(cat "$LAB_DIR/parsed.txt")"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for sample in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        print(f"{family.type} {sample.name}{{{labels}}} {sample.value:g}")
PY
indent < <(grep -E "admitted|rejected|midcom_sessions|rule_hits|nft_batch_seconds_count|parse_seconds_count|ruleset_intact" "$LAB_DIR/parsed.txt")
parsed=$(cat "$LAB_DIR/parsed.txt")
expect_match "$parsed" "^counter midcom_admitted_total\{\} 1$" "admitted counter"
expect_match "$parsed" "^counter midcom_rejected_total\{\} 1$" "rejected counter"
expect_match "$parsed" "^gauge midcom_sessions\{origin=csp,state=admitted\} 1$" "sessions by state and origin"
expect_match "$parsed" "^counter midcom_rule_hits_total\{action=reject,rule=no-telnet\} 1$" "the rule's hits"
expect_match "$parsed" "^histogram midcom_nft_batch_seconds_count\{\} [1-9]" "nft batch latency observed"
expect_match "$parsed" "^histogram midcom_signaling_parse_seconds_count\{signed=false\} [1-9]" "parse cost observed"
expect_match "$parsed" "^gauge midcom_ruleset_intact\{\} 1$" "ruleset intact"

step "counters only go up between scrapes"
csp_run client setup udp 10.200.2.2:5001 --sport 4002 --lifetime 60 --responder csp
in_ns gw curl -s http://127.0.0.1:9727/metrics >"$LAB_DIR/metrics2.txt"
expect_match "$(cat "$LAB_DIR/metrics2.txt")" "^midcom_admitted_total 2$" "admitted counter after one more"
expect_match "$(cat "$LAB_DIR/metrics2.txt")" 'midcom_sessions\{state="admitted",origin="csp"\} 2' "two sessions"
expect_eq "$(in_ns gw curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9727/other)" 404 "another path"

step "without [metrics] nothing listens"
kill "$MIDCOMD_PID"; wait "$MIDCOMD_PID" 2>/dev/null || true
lab_midcomd gw "$(lab_signaling_conf gw gw1)"
set +e; in_ns gw curl -s -m 2 -o /dev/null http://127.0.0.1:9727/metrics; rc=$?; set -e
expect_eq "$rc" 7 "curl: connection refused"
echo "ops-metrics: all checks passed"
