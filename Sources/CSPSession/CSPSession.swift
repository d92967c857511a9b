// CSPSession: the relayed-session layer of docs/PROTOCOL.md section 14 — hop frames and their TLVs,
// the end-to-end records and the state machines that drive them. Pure: no sockets, time passed in;
// the socket drivers live in CSPHost (ends) and midrelayd (relays).
