-- Wireshark dissector for the Connection Signaling Protocol (docs/PROTOCOL.md).
--
--   tshark -X lua_script:tools/wireshark/csp.lua -r capture.pcap -V
--   or copy into ~/.local/lib/wireshark/plugins/
--
-- Decodes the CSP header and every TLV (MIDDLEBOX-RECORDs with their nested TLVs) on UDP port 7227
-- (preference "csp.udp_port"), optionally found heuristically on any UDP port (preference
-- "csp.heuristic"), and the discovery option in IPv4 options, IPv6 hop-by-hop options and TCP
-- options (a post-dissector, preference "csp.discovery").

local csp = Proto("csp", "Connection Signaling Protocol")

local message_types = {
    [1] = "SETUP", [2] = "ACCEPT", [3] = "REJECT", [4] = "REDIRECT", [5] = "MAPPED", [6] = "CHALLENGE",
    [7] = "RESPONSE", [8] = "REBIND", [9] = "ADD-PATH", [10] = "REMOVE-PATH", [11] = "DENY",
    [12] = "REFRESH", [13] = "TEARDOWN", [14] = "ANNOUNCE",
}
local result_codes = {
    [0] = "success", [1] = "unsupported-version", [2] = "malformed-message", [3] = "unknown-critical-tlv",
    [4] = "unknown-session", [5] = "authentication-failed", [6] = "challenge-required", [7] = "source-port-required",
    [64] = "policy-denied", [65] = "administratively-prohibited", [66] = "source-denied",
    [128] = "resources-exhausted", [129] = "middlebox-unavailable",
}
local decisions = {
    [0] = "forwarded", [1] = "admitted", [2] = "rejected", [3] = "redirected", [4] = "mapped",
    [5] = "challenged", [6] = "denied", [7] = "rebound", [8] = "removed",
}
local tlv_types = {
    [0x8001] = "FLOW", [0x0002] = "LIFETIME", [0x0003] = "APPLICATION", [0x0004] = "REQUESTED-ACTION",
    [0x0005] = "REASON", [0x8006] = "REDIRECT-TARGET", [0x0007] = "MAPPED-ADDRESS", [0x0008] = "HOST-ADDRESS",
    [0x0009] = "MIDDLEBOX-RECORD", [0x000a] = "EPOCH", [0x000b] = "IDENTITY", [0x000c] = "SIGNATURE",
    [0x800d] = "CHALLENGE-TOKEN", [0x800e] = "NEW-ADDRESS", [0x800f] = "PATH", [0x8010] = "DENY-SOURCE",
    [0x0011] = "MIDDLEBOX-NAME", [0x0012] = "TIMESTAMP",
}
local key_types = { [1] = "Ed25519" }
local result_class = function(r)
    if r == 0 then return "success" elseif r < 64 then return "host-fixable"
    elseif r < 128 then return "policy" else return "retryable" end
end

local f = csp.fields
f.magic = ProtoField.uint16("csp.magic", "Magic", base.HEX)
f.version = ProtoField.uint8("csp.version", "Version", base.DEC)
f.type = ProtoField.uint8("csp.type", "Type", base.DEC, message_types)
f.flags = ProtoField.uint8("csp.flags", "Flags", base.HEX)
f.flag_mb = ProtoField.bool("csp.flags.from_middlebox", "From middlebox", 8, nil, 0x01)
f.flag_rr = ProtoField.bool("csp.flags.record_route", "Record route", 8, nil, 0x02)
f.flag_signed = ProtoField.bool("csp.flags.signed", "Signed", 8, nil, 0x04)
f.result = ProtoField.uint8("csp.result", "Result", base.DEC, result_codes)
f.result_class = ProtoField.string("csp.result_class", "Result class")
f.length = ProtoField.uint16("csp.length", "Length", base.DEC)
f.session = ProtoField.uint64("csp.session_id", "Session ID", base.HEX)
f.nonce = ProtoField.uint64("csp.nonce", "Nonce", base.HEX)
f.sequence = ProtoField.uint32("csp.sequence", "Sequence", base.DEC)

f.tlv = ProtoField.bytes("csp.tlv", "TLV")
f.tlv_type = ProtoField.uint16("csp.tlv.type", "TLV type", base.HEX, tlv_types)
f.tlv_critical = ProtoField.bool("csp.tlv.critical", "Critical", 16, nil, 0x8000)
f.tlv_length = ProtoField.uint16("csp.tlv.length", "TLV length", base.DEC)
f.tlv_value = ProtoField.bytes("csp.tlv.value", "Value")

f.flow_proto = ProtoField.uint8("csp.flow.proto", "Protocol", base.DEC)
f.flow_family = ProtoField.uint8("csp.flow.family", "Family", base.DEC)
f.flow_sport = ProtoField.uint16("csp.flow.sport", "Source port", base.DEC)
f.flow_dport = ProtoField.uint16("csp.flow.dport", "Destination port", base.DEC)
f.flow_src4 = ProtoField.ipv4("csp.flow.src", "Source")
f.flow_dst4 = ProtoField.ipv4("csp.flow.dst", "Destination")
f.flow_src6 = ProtoField.ipv6("csp.flow.src6", "Source")
f.flow_dst6 = ProtoField.ipv6("csp.flow.dst6", "Destination")
f.lifetime = ProtoField.uint32("csp.lifetime", "Lifetime (s)", base.DEC)
f.application = ProtoField.string("csp.application", "Application")
f.action = ProtoField.uint8("csp.action", "Requested action", base.HEX)
f.action_admit = ProtoField.bool("csp.action.admit", "Admit", 8, nil, 0x01)
f.action_redirect = ProtoField.bool("csp.action.allow_redirect", "Allow redirect", 8, nil, 0x02)
f.action_mapping = ProtoField.bool("csp.action.want_mapping", "Want mapping", 8, nil, 0x04)
f.action_listen = ProtoField.bool("csp.action.listen", "Listen", 8, nil, 0x08)
f.reason_code = ProtoField.uint16("csp.reason.detail", "Detail", base.DEC)
f.reason_retry = ProtoField.uint32("csp.reason.retry_after", "Retry after (s)", base.DEC)
f.reason_text = ProtoField.string("csp.reason.text", "Text")
f.ep_family = ProtoField.uint8("csp.endpoint.family", "Family", base.DEC)
f.ep_port = ProtoField.uint16("csp.endpoint.port", "Port", base.DEC)
f.ep_addr4 = ProtoField.ipv4("csp.endpoint.address", "Address")
f.ep_addr6 = ProtoField.ipv6("csp.endpoint.address6", "Address")
f.record_id = ProtoField.uint64("csp.record.id", "Middlebox ID", base.HEX)
f.record_epoch = ProtoField.uint32("csp.record.epoch", "Epoch", base.DEC)
f.record_decision = ProtoField.uint8("csp.record.decision", "Decision", base.DEC, decisions)
f.record_lifetime = ProtoField.uint32("csp.record.granted_lifetime", "Granted lifetime (s)", base.DEC)
f.epoch = ProtoField.uint32("csp.epoch", "Host epoch", base.DEC)
f.key_type = ProtoField.uint8("csp.key_type", "Key type", base.DEC, key_types)
f.identity = ProtoField.bytes("csp.identity", "Public key")
f.signature = ProtoField.bytes("csp.signature", "Signature")
f.token = ProtoField.bytes("csp.challenge_token", "Challenge token")
f.path_id = ProtoField.uint8("csp.path.id", "Path ID", base.DEC)
f.deny_plen = ProtoField.uint8("csp.deny.prefix_length", "Prefix length", base.DEC)
f.deny_proto = ProtoField.uint8("csp.deny.proto", "Protocol", base.DEC)
f.deny_port = ProtoField.uint16("csp.deny.port", "Port", base.DEC)
f.deny_prefix4 = ProtoField.ipv4("csp.deny.prefix", "Prefix")
f.deny_prefix6 = ProtoField.ipv6("csp.deny.prefix6", "Prefix")
f.mb_name = ProtoField.string("csp.middlebox_name", "Middlebox name")
f.timestamp = ProtoField.uint64("csp.timestamp", "Timestamp (s since 1970)", base.DEC)

f.disc_encoding = ProtoField.string("csp.discovery.encoding", "Discovery option container")
f.disc_flags = ProtoField.uint8("csp.discovery.flags", "Flags", base.HEX)
f.disc_query = ProtoField.bool("csp.discovery.query", "Query", 8, nil, 0x01)
f.disc_capable = ProtoField.bool("csp.discovery.capable", "Capable", 8, nil, 0x02)
f.disc_port = ProtoField.uint16("csp.discovery.reply_port", "Reply port (0 = 7227)", base.DEC)
f.disc_nonce = ProtoField.uint64("csp.discovery.nonce", "Nonce", base.HEX)

local ef_malformed = ProtoExpert.new("csp.malformed", "Malformed CSP message", expert.group.MALFORMED, expert.severity.ERROR)
local ef_critical = ProtoExpert.new("csp.unknown_critical", "Unknown critical TLV: a receiver rejects the message",
    expert.group.PROTOCOL, expert.severity.WARN)
csp.experts = { ef_malformed, ef_critical }

csp.prefs.udp_port = Pref.uint("UDP port", 7227, "UDP port of CSP")
csp.prefs.heuristic = Pref.bool("Heuristic on all UDP ports", true, "Find CSP by its magic and length on any UDP port")
csp.prefs.discovery = Pref.bool("Decode discovery options", true, "Decode the CSP discovery option in IPv4/IPv6/TCP options")

local function add_endpoint(tree, tvb, o, len)
    if len < 4 then return false end
    local family = tvb(o, 1):uint()
    local alen = (family == 4 and 4) or (family == 6 and 16) or nil
    if alen == nil or len ~= 4 + alen then return false end
    tree:add(f.ep_family, tvb(o, 1))
    tree:add(f.ep_port, tvb(o + 2, 2))
    tree:add(alen == 4 and f.ep_addr4 or f.ep_addr6, tvb(o + 4, alen))
    local addr = alen == 4 and tostring(tvb(o + 4, 4):ipv4()) or ("[" .. tostring(tvb(o + 4, 16):ipv6()) .. "]")
    tree:append_text(": " .. addr .. ":" .. tvb(o + 2, 2):uint())
    return true
end

local dissect_tlvs -- forward declaration

-- Decodes one TLV value; returns false when the value is impossible for its type.
local function dissect_value(t, tree, tvb, o, len, pinfo, depth)
    if t == 0x8001 then
        if len < 6 then return false end
        local family = tvb(o + 1, 1):uint()
        local alen = (family == 4 and 4) or (family == 6 and 16) or nil
        if alen == nil or len ~= 6 + 2 * alen then return false end
        tree:add(f.flow_proto, tvb(o, 1)); tree:add(f.flow_family, tvb(o + 1, 1))
        tree:add(f.flow_sport, tvb(o + 2, 2)); tree:add(f.flow_dport, tvb(o + 4, 2))
        tree:add(alen == 4 and f.flow_src4 or f.flow_src6, tvb(o + 6, alen))
        tree:add(alen == 4 and f.flow_dst4 or f.flow_dst6, tvb(o + 6 + alen, alen))
    elseif t == 0x0002 then
        if len ~= 4 then return false end
        tree:add(f.lifetime, tvb(o, 4)); tree:append_text(": " .. tvb(o, 4):uint() .. " s")
    elseif t == 0x0003 or t == 0x0011 then
        if len > 255 then return false end
        if len > 0 then
            tree:add(t == 0x0003 and f.application or f.mb_name, tvb(o, len), tvb(o, len):string(ENC_UTF_8))
            tree:append_text(": " .. tvb(o, len):string(ENC_UTF_8))
        end
    elseif t == 0x0004 then
        if len ~= 1 then return false end
        local a = tree:add(f.action, tvb(o, 1))
        a:add(f.action_admit, tvb(o, 1)); a:add(f.action_redirect, tvb(o, 1))
        a:add(f.action_mapping, tvb(o, 1)); a:add(f.action_listen, tvb(o, 1))
    elseif t == 0x0005 then
        if len < 6 or len > 261 then return false end
        tree:add(f.reason_code, tvb(o, 2)); tree:add(f.reason_retry, tvb(o + 2, 4))
        if len > 6 then tree:add(f.reason_text, tvb(o + 6, len - 6), tvb(o + 6, len - 6):string(ENC_UTF_8)) end
    elseif t == 0x8006 or t == 0x0007 or t == 0x0008 or t == 0x800e then
        return add_endpoint(tree, tvb, o, len)
    elseif t == 0x0009 then
        if depth > 0 or len < 18 then return false end
        tree:add(f.record_id, tvb(o, 8)); tree:add(f.record_epoch, tvb(o + 8, 4))
        tree:add(f.record_decision, tvb(o + 12, 1)); tree:add(f.record_lifetime, tvb(o + 14, 4))
        local d = tvb(o + 12, 1):uint()
        tree:append_text(string.format(": %s, epoch %d, %s", tvb(o, 8):uint64():tohex(), tvb(o + 8, 4):uint(),
            decisions[d] or ("decision-" .. d)))
        return dissect_tlvs(tvb, tree, o + 18, o + len, pinfo, depth + 1)
    elseif t == 0x000a then
        if len ~= 4 then return false end
        tree:add(f.epoch, tvb(o, 4))
    elseif t == 0x000b or t == 0x000c then
        if len < 1 then return false end
        local kt = tvb(o, 1):uint()
        if kt == 1 and len ~= 1 + (t == 0x000b and 32 or 64) then return false end
        tree:add(f.key_type, tvb(o, 1))
        if len > 1 then tree:add(t == 0x000b and f.identity or f.signature, tvb(o + 1, len - 1)) end
    elseif t == 0x800d then
        if len < 8 or len > 32 then return false end
        tree:add(f.token, tvb(o, len))
    elseif t == 0x800f then
        if len < 1 then return false end
        tree:add(f.path_id, tvb(o, 1))
        return add_endpoint(tree, tvb, o + 1, len - 1)
    elseif t == 0x8010 then
        if len < 6 then return false end
        local family = tvb(o, 1):uint()
        local alen = (family == 4 and 4) or (family == 6 and 16) or nil
        if alen == nil or len ~= 6 + alen or tvb(o + 1, 1):uint() > alen * 8 then return false end
        tree:add(f.deny_plen, tvb(o + 1, 1)); tree:add(f.deny_proto, tvb(o + 2, 1)); tree:add(f.deny_port, tvb(o + 4, 2))
        tree:add(alen == 4 and f.deny_prefix4 or f.deny_prefix6, tvb(o + 6, alen))
    elseif t == 0x0012 then
        if len ~= 8 then return false end
        tree:add(f.timestamp, tvb(o, 8))
    else
        if len > 0 then tree:add(f.tlv_value, tvb(o, len)) end
        if bit.band(t, 0x8000) ~= 0 then tree:add_proto_expert_info(ef_critical) end
    end
    return true
end

dissect_tlvs = function(tvb, tree, o, stop, pinfo, depth)
    while o < stop do
        if stop - o < 4 then
            tree:add_proto_expert_info(ef_malformed, "TLV header truncated")
            return false
        end
        local t = tvb(o, 2):uint()
        local len = tvb(o + 2, 2):uint()
        if len > stop - o - 4 then
            local bad = tree:add(f.tlv, tvb(o, stop - o))
            bad:set_text(string.format("%s (0x%04x): length %d runs past the end", tlv_types[t] or "TLV", t, len))
            bad:add_proto_expert_info(ef_malformed, "TLV overrun")
            return false
        end
        local sub = tree:add(f.tlv, tvb(o, 4 + len))
        sub:set_text(tlv_types[t] or string.format("Unknown TLV 0x%04x", t))
        sub:add(f.tlv_type, tvb(o, 2)); sub:add(f.tlv_critical, tvb(o, 2)); sub:add(f.tlv_length, tvb(o + 2, 2))
        if not dissect_value(t, sub, tvb, o + 4, len, pinfo, depth) then
            sub:add_proto_expert_info(ef_malformed, "impossible value for this TLV type")
        end
        o = o + 4 + len
    end
    return true
end

local function looks_like_csp(tvb)
    return tvb:len() >= 28 and tvb(0, 2):uint() == 0x4353 and tvb(2, 1):uint() == 1 and tvb(6, 2):uint() == tvb:len()
end

function csp.dissector(tvb, pinfo, tree)
    if tvb:len() < 4 or tvb(0, 2):uint() ~= 0x4353 then return 0 end
    pinfo.cols.protocol = "CSP"
    local root = tree:add(csp, tvb())
    root:add(f.magic, tvb(0, 2))
    if tvb:len() < 28 then
        root:add_proto_expert_info(ef_malformed, "shorter than the 28-octet header")
        return tvb:len()
    end
    root:add(f.version, tvb(2, 1))
    local t = tvb(3, 1):uint()
    root:add(f.type, tvb(3, 1))
    local flags = root:add(f.flags, tvb(4, 1))
    flags:add(f.flag_mb, tvb(4, 1)); flags:add(f.flag_rr, tvb(4, 1)); flags:add(f.flag_signed, tvb(4, 1))
    local r = tvb(5, 1):uint()
    root:add(f.result, tvb(5, 1))
    root:add(f.result_class, tvb(5, 1), result_class(r))
    root:add(f.length, tvb(6, 2))
    root:add(f.session, tvb(8, 8)); root:add(f.nonce, tvb(16, 8)); root:add(f.sequence, tvb(24, 4))
    local name = message_types[t] or ("type-" .. t)
    local info = name .. " session=" .. tvb(8, 8):uint64():tohex() .. " seq=" .. tvb(24, 4):uint()
    if r ~= 0 then info = info .. " result=" .. (result_codes[r] or r) end
    if bit.band(tvb(4, 1):uint(), 1) ~= 0 then info = info .. " [from middlebox]" end
    pinfo.cols.info = "CSP " .. info
    root:append_text(", " .. name)
    if tvb(2, 1):uint() ~= 1 then
        root:add_proto_expert_info(ef_malformed, "unsupported version")
        return tvb:len()
    end
    local declared = tvb(6, 2):uint()
    if declared ~= tvb:len() or declared < 28 then
        root:add_proto_expert_info(ef_malformed, string.format("length %d but %d octets", declared, tvb:len()))
        declared = math.min(math.max(declared, 28), tvb:len())
    end
    dissect_tlvs(tvb, root, 28, declared, pinfo, 0)
    return tvb:len()
end

local function heuristic(tvb, pinfo, tree)
    if not csp.prefs.heuristic or not looks_like_csp(tvb) then return false end
    csp.dissector(tvb, pinfo, tree)
    return true
end
csp:register_heuristic("udp", heuristic)

local registered_port = nil
local function register_port()
    local udp = DissectorTable.get("udp.port")
    if registered_port then udp:remove(registered_port, csp) end
    registered_port = csp.prefs.udp_port
    udp:add(registered_port, csp)
end
function csp.prefs_changed() register_port() end
register_port()

---------------------------------------------------------------------------------------------------
-- Discovery option post-dissector: reads the raw IPv4 options, IPv6 hop-by-hop header and TCP
-- options at the offsets Wireshark's own dissectors report.

local disc = Proto("csp_discovery", "CSP discovery option")
local fe_ip_version = Field.new("ip.version")
local fe_ipv6_version = Field.new("ipv6.version")
local fe_tcp_srcport = Field.new("tcp.srcport")

local function add_body(tree, tvb, o, encoding)
    local node = tree:add(disc, tvb(o, 12))
    node:set_text("CSP discovery option (" .. encoding .. ")")
    node:add(f.disc_encoding, tvb(o, 12), encoding)
    local fl = node:add(f.disc_flags, tvb(o, 1))
    fl:add(f.disc_query, tvb(o, 1)); fl:add(f.disc_capable, tvb(o, 1))
    node:add(f.disc_port, tvb(o + 2, 2))
    node:add(f.disc_nonce, tvb(o + 4, 8))
    node:append_text(": nonce " .. tvb(o + 4, 8):uint64():tohex())
end

-- Walks an option list; calls found(dataOffset, dataLength, type) for each option.
local function walk(tvb, o, stop, ipv6_grammar, found)
    while o < stop do
        local kind = tvb(o, 1):uint()
        if ipv6_grammar and kind == 0 then o = o + 1
        elseif not ipv6_grammar and kind == 0 then return
        elseif not ipv6_grammar and kind == 1 then o = o + 1
        else
            if stop - o < 2 then return end
            local len = tvb(o + 1, 1):uint()
            local total = ipv6_grammar and (2 + len) or len
            if total < 2 or total > stop - o then return end
            found(o + 2, total - 2, kind)
            o = o + total
        end
    end
end

function disc.dissector(tvb, pinfo, tree)
    if not csp.prefs.discovery then return end
    for _, fi in ipairs({ fe_ip_version() }) do
        local o = fi.offset
        if o + 20 <= tvb:len() then
            local ihl = bit.band(tvb(o, 1):uint(), 0x0f) * 4
            if ihl > 20 and o + ihl <= tvb:len() then
                walk(tvb, o + 20, o + ihl, false, function(d, n, kind)
                    if kind == 0x9e and n >= 12 then add_body(tree, tvb, d, "IPv4 option 0x9e") end
                end)
            end
        end
    end
    for _, fi in ipairs({ fe_ipv6_version() }) do
        local o = fi.offset
        if o + 48 <= tvb:len() and tvb(o + 6, 1):uint() == 0 then
            local hlen = (tvb(o + 41, 1):uint() + 1) * 8
            if o + 40 + hlen <= tvb:len() then
                walk(tvb, o + 42, o + 40 + hlen, true, function(d, n, kind)
                    if kind == 0x1e and n >= 12 then add_body(tree, tvb, d, "IPv6 hop-by-hop option 0x1e") end
                end)
            end
        end
    end
    for _, fi in ipairs({ fe_tcp_srcport() }) do
        local o = fi.offset
        if o + 20 <= tvb:len() then
            local hlen = bit.rshift(tvb(o + 12, 1):uint(), 4) * 4
            if hlen > 20 and o + hlen <= tvb:len() then
                walk(tvb, o + 20, o + hlen, false, function(d, n, kind)
                    if kind == 253 and n >= 14 and tvb(d, 2):uint() == 0x4353 then
                        add_body(tree, tvb, d + 2, "TCP option 253, ExID 0x4353")
                    end
                end)
            end
        end
    end
end
register_postdissector(disc, true)
