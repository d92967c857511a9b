#!/usr/bin/env python3
"""Copies Tests/CSPWireTests/Vectors/*.hex into docs/PROTOCOL.md between the vector markers.

The .hex files are written by the codec (CSP_REGENERATE_VECTORS=1 swift test --filter VectorFileTests);
VectorFileTests.testProtocolDocumentQuotesEveryVector fails when PROTOCOL.md is stale.
"""
import os, sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
vectors = os.path.join(root, "Tests", "CSPWireTests", "Vectors")
doc = os.path.join(root, "docs", "PROTOCOL.md")
begin, end = "<!-- vectors:begin -->", "<!-- vectors:end -->"

order = ["setup-udp-ipv4", "setup-udp-ipv4-in-transit", "setup-tcp-ipv6-listen", "accept-two-records",
         "reject-from-middlebox", "reject-retry", "redirect", "mapped", "challenge", "response", "rebind-ipv6",
         "add-path", "remove-path", "deny", "refresh", "refresh-delete", "teardown", "announce",
         "unknown-noncritical", "discovery-ipv4-option", "discovery-ipv6-hbh", "discovery-tcp-option"]
names = sorted(n[:-4] for n in os.listdir(vectors) if n.endswith(".hex"))
missing = set(names) - set(order)
if missing:
    sys.exit(f"add {sorted(missing)} to the order list")
blocks = []
for name in order:
    with open(os.path.join(vectors, name + ".hex")) as f:
        blocks.append("```\n" + f.read() + "```\n")
text = open(doc).read()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(head + begin + "\n" + "\n".join(blocks) + end + tail)
print(f"updated {len(blocks)} vectors in {doc}")
