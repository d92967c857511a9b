#!/usr/bin/env python3
"""An independent Noise_XX_25519_ChaChaPoly_SHA256 over Python's `cryptography` primitives.

docs/PROTOCOL.md 14.13: the Swift implementation (Sources/CSPTrust/Noise) must reproduce this
script's output byte for byte, so that one misreading of the Noise specification (revision 34)
cannot pass on both sides. Written from the specification, not from the Swift code: HKDF here is
section 4.3's HMAC construction, not a library HKDF.

The inputs are CSP's: static keys derived from Ed25519 seeds (PROTOCOL.md 14.4), identity blocks
as the payloads of messages 2 and 3, the end-to-end prologue of 14.7, a few records, a Rekey, the
resume key and blob (14.7) and a RELAY-TOKEN (14.2).

    noise_xx_crosscheck.py              print the JSON
    noise_xx_crosscheck.py --check F    exit 1 if the output differs from file F
    noise_xx_crosscheck.py --write F    write the JSON to F
"""

import argparse
import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RAW = serialization.Encoding.Raw
PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
HASHLEN = 32
MAX_NONCE = 2**64 - 1


# ---- Noise section 4: the functions -------------------------------------------------------------

def dh(private, public):
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))


def public_key(private):
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(RAW, serialization.PublicFormat.Raw)


def nonce12(n):
    # Section 12.3: 32 bits of zeros, then the 64-bit nonce little-endian.
    return b"\x00" * 4 + struct.pack("<Q", n)


def encrypt(k, n, ad, plaintext):
    return ChaCha20Poly1305(k).encrypt(nonce12(n), plaintext, ad)


def decrypt(k, n, ad, ciphertext):
    return ChaCha20Poly1305(k).decrypt(nonce12(n), ciphertext, ad)


def rekey(k):
    # Section 4.2: REKEY(k) = ENCRYPT(k, maxnonce, zerolen, zeros)[:32].
    return encrypt(k, MAX_NONCE, b"", b"\x00" * 32)[:32]


def sha256(data):
    return hashlib.sha256(data).digest()


def hmac_sha256(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def noise_hkdf(chaining_key, input_key_material, num_outputs):
    # Section 4.3, literally.
    temp_key = hmac_sha256(chaining_key, input_key_material)
    output1 = hmac_sha256(temp_key, b"\x01")
    output2 = hmac_sha256(temp_key, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    output3 = hmac_sha256(temp_key, output2 + b"\x03")
    return output1, output2, output3


# ---- Noise section 5: the state objects ---------------------------------------------------------

class CipherState:
    def __init__(self, k=None):
        self.k = k
        self.n = 0

    def encrypt_with_ad(self, ad, plaintext):
        if self.k is None:
            return plaintext
        assert self.n < MAX_NONCE
        out = encrypt(self.k, self.n, ad, plaintext)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad, ciphertext):
        if self.k is None:
            return ciphertext
        out = decrypt(self.k, self.n, ad, ciphertext)
        self.n += 1
        return out

    def rekey(self):
        self.k = rekey(self.k)


class SymmetricState:
    def __init__(self, protocol_name):
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name + b"\x00" * (HASHLEN - len(protocol_name))
        else:
            self.h = sha256(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm):
        self.ck, temp_k = noise_hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data):
        self.h = sha256(self.h + data)

    def encrypt_and_hash(self, plaintext):
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext):
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self, num_outputs=2):
        return noise_hkdf(self.ck, b"", num_outputs)


XX = [["e"], ["e", "ee", "s", "es"], ["s", "se"]]


class HandshakeState:
    def __init__(self, initiator, prologue, s, e):
        self.initiator = initiator
        self.ss = SymmetricState(PROTOCOL_NAME)
        self.ss.mix_hash(prologue)
        self.s, self.e = s, e
        self.rs = self.re = None
        self.patterns = list(XX)

    def _dh(self, token):
        if token == "ee":
            return dh(self.e, self.re)
        if token == "es":
            return dh(self.e, self.rs) if self.initiator else dh(self.s, self.re)
        if token == "se":
            return dh(self.s, self.re) if self.initiator else dh(self.e, self.rs)
        raise ValueError(token)

    def write_message(self, payload):
        out = b""
        for token in self.patterns.pop(0):
            if token == "e":
                out += public_key(self.e)
                self.ss.mix_hash(public_key(self.e))
            elif token == "s":
                out += self.ss.encrypt_and_hash(public_key(self.s))
            else:
                self.ss.mix_key(self._dh(token))
        out += self.ss.encrypt_and_hash(payload)
        return out

    def read_message(self, message):
        for token in self.patterns.pop(0):
            if token == "e":
                self.re, message = message[:32], message[32:]
                self.ss.mix_hash(self.re)
            elif token == "s":
                n = 48 if self.ss.cipher.k is not None else 32
                self.rs = self.ss.decrypt_and_hash(message[:n])
                message = message[n:]
            else:
                self.ss.mix_key(self._dh(token))
        return self.ss.decrypt_and_hash(message)


# ---- CSP (PROTOCOL.md 14) -----------------------------------------------------------------------

def derived_x25519(seed, generation=0):
    # 14.4: HKDF-SHA-256(IKM = seed, salt = empty, info = "CSP1 x25519 static" ‖ generation(4), L = 32).
    info = b"CSP1 x25519 static" + struct.pack(">I", generation)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)


def identity_block(seed, x25519_public, generation=0):
    key = Ed25519PrivateKey.from_private_bytes(seed)
    ed_public = key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)
    gen = struct.pack(">I", generation)
    signature = key.sign(b"CSP1 x25519\x00" + ed_public + gen + x25519_public)
    return ed_public + gen + signature


def endpoint(family, port, address):
    # 3.2: family(1) reserved(1) port(2) address(4|16)
    return bytes([family, 0]) + struct.pack(">H", port) + address


def relay_token(token_key, session_id, hop_index, modes, expiry, upstream_key, proto, target, relay):
    mac_input = (b"CSP1 relay token\x00" + struct.pack(">QBBI", session_id, hop_index, modes, expiry)
                 + upstream_key + bytes([proto]) + target + relay)
    mac = hmac_sha256(token_key, mac_input)[:16]
    return bytes([1, hop_index, modes, 0]) + struct.pack(">I", expiry) + mac


def run():
    h = bytes.hex
    session_id = 0x0123456789ABCDEF
    target = endpoint(4, 443, bytes([198, 51, 100, 7]))
    target_tlv_value = bytes([6]) + target                       # TARGET: proto(1) endpoint
    prologue = b"CSP1 e2e" + struct.pack(">Q", session_id) + target_tlv_value

    init_seed, resp_seed = b"\x01" * 32, b"\x02" * 32
    init_s, resp_s = derived_x25519(init_seed), derived_x25519(resp_seed)
    init_e = bytes(range(0x20, 0x40))
    resp_e = bytes(range(0x40, 0x60))
    init_block = identity_block(init_seed, public_key(init_s))
    resp_block = identity_block(resp_seed, public_key(resp_s))

    initiator = HandshakeState(True, prologue, init_s, init_e)
    responder = HandshakeState(False, prologue, resp_s, resp_e)
    payloads = [b"", resp_block, init_block + b"\x80\x99\x00\x01\x07"]
    messages = []
    for i, payload in enumerate(payloads):
        sender, receiver = (initiator, responder) if i % 2 == 0 else (responder, initiator)
        message = sender.write_message(payload)
        assert receiver.read_message(message) == payload
        messages.append({"payload": h(payload), "message": h(message)})
    assert initiator.ss.h == responder.ss.h
    assert initiator.rs == public_key(resp_s) and responder.rs == public_key(init_s)

    k1, k2, k_resume = initiator.ss.split(3)
    assert (k1, k2) == initiator.ss.split(2) == responder.ss.split(2)
    i2r, r2i = CipherState(k1), CipherState(k2)

    # Records (14.7): length(2) is framing, the ciphertext is ENCRYPT(k, n, empty, type ‖ body).
    transport = []
    for direction, cipher, plaintext in [
        ("initiator-to-responder", i2r, b"\x01hello, responder"),
        ("initiator-to-responder", i2r, b"\x01" + bytes(range(256)) * 4),
        ("responder-to-initiator", r2i, b"\x01hello, initiator"),
        ("initiator-to-responder", i2r, b"\x05"),                    # KEY-UPDATE, then Rekey
    ]:
        nonce = cipher.n
        transport.append({"direction": direction, "nonce": nonce, "plaintext": h(plaintext),
                          "ciphertext": h(cipher.encrypt_with_ad(b"", plaintext))})
    i2r.rekey()
    for plaintext in [b"\x01after rekey", b"\x03"]:
        nonce = i2r.n
        transport.append({"direction": "initiator-to-responder", "nonce": nonce, "plaintext": h(plaintext),
                          "ciphertext": h(i2r.encrypt_with_ad(b"", plaintext)), "rekeyed": True})
    # An explicit nonce, as a retransmission layer uses one.
    transport.append({"direction": "responder-to-initiator", "nonce": 1000, "plaintext": h(b"\x06\x00\x00\x00\x00\x00\x00\x00\x2a"),
                      "ciphertext": h(encrypt(k2, 1000, b"", b"\x06\x00\x00\x00\x00\x00\x00\x00\x2a"))})

    # Resume blob (14.7): epoch(4) ‖ ENCRYPT(k_resume, 2·epoch + d, "CSP1 resume" ‖ S, nextExpected(8)).
    epoch, d, next_expected = 1, 0, 3
    blob = struct.pack(">I", epoch) + encrypt(k_resume, 2 * epoch + d, b"CSP1 resume" + struct.pack(">Q", session_id),
                                              struct.pack(">Q", next_expected))

    token_key = bytes(range(0xA0, 0xC0))
    init_ed_public = init_block[:32]
    relay_endpoint = endpoint(6, 7228, bytes.fromhex("20010db8000000000000000000000001"))
    token = relay_token(token_key, session_id, 1, 0x03, 1_700_000_060, init_ed_public, 6, target, relay_endpoint)

    return {
        "about": "Noise_XX_25519_ChaChaPoly_SHA256 with CSP's inputs, computed by Tests/crypto/noise_xx_crosscheck.py "
                 "(Python cryptography); the Swift tests must reproduce every octet",
        "protocol_name": PROTOCOL_NAME.decode(),
        "session_id": session_id,
        "target": h(target_tlv_value),
        "prologue": h(prologue),
        "initiator": {"seed": h(init_seed), "static_private": h(init_s), "static_public": h(public_key(init_s)),
                      "ephemeral_private": h(init_e), "identity_block": h(init_block)},
        "responder": {"seed": h(resp_seed), "static_private": h(resp_s), "static_public": h(public_key(resp_s)),
                      "ephemeral_private": h(resp_e), "identity_block": h(resp_block)},
        "handshake": messages,
        "handshake_hash": h(initiator.ss.h),
        "split": {"initiator_to_responder": h(k1), "responder_to_initiator": h(k2), "k_resume": h(k_resume)},
        "transport": transport,
        "resume_blob": {"epoch": epoch, "d": d, "next_expected": next_expected, "blob": h(blob)},
        "relay_token": {"key": h(token_key), "session_id": session_id, "hop_index": 1, "modes": 3,
                        "expiry": 1_700_000_060, "upstream_key": h(init_ed_public), "target_protocol": 6,
                        "target": "198.51.100.7:443", "relay_endpoint": "[2001:db8::1]:7228", "token": h(token)},
    }


CACOPHONY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "CSPTrustTests", "Vectors",
                         "noise-xx-cacophony.json")


def check_cacophony():
    """This implementation must first pass the Noise community's vector, or its output means nothing."""
    v = json.load(open(CACOPHONY))["vector"]
    b = bytes.fromhex
    initiator = HandshakeState(True, b(v["init_prologue"]), b(v["init_static"]), b(v["init_ephemeral"]))
    responder = HandshakeState(False, b(v["resp_prologue"]), b(v["resp_static"]), b(v["resp_ephemeral"]))
    ciphers = None
    for i, m in enumerate(v["messages"]):
        if i < 3:
            sender, receiver = (initiator, responder) if i % 2 == 0 else (responder, initiator)
            out = sender.write_message(b(m["payload"]))
            assert receiver.read_message(out) == b(m["payload"])
        else:
            if ciphers is None:
                assert initiator.ss.h == b(v["handshake_hash"]), "cacophony: handshake hash"
                k1, k2 = initiator.ss.split()
                ciphers = [(CipherState(k1), CipherState(k1)), (CipherState(k2), CipherState(k2))]
            send, receive = ciphers[i % 2]
            out = send.encrypt_with_ad(b"", b(m["payload"]))
            assert receive.decrypt_with_ad(b"", out) == b(m["payload"])
        assert out == b(m["ciphertext"]), f"cacophony: message {i}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", metavar="FILE", help="exit 1 if the output differs from FILE")
    group.add_argument("--write", metavar="FILE", help="write the output to FILE")
    args = parser.parse_args()
    check_cacophony()
    text = json.dumps(run(), indent=2, sort_keys=True) + "\n"
    if args.check:
        with open(args.check) as f:
            stored = f.read()
        if stored != text:
            print(f"noise_xx_crosscheck: {args.check} differs from this implementation's output; "
                  f"regenerate with --write only if the change is understood", file=sys.stderr)
            return 1
        print(f"noise_xx_crosscheck: {args.check} matches")
        return 0
    if args.write:
        with open(args.write, "w") as f:
            f.write(text)
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
