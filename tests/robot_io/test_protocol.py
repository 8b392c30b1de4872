"""Protocol 2.0 framing, CRC, byte stuffing and the incremental parser (C2, C3, C4).

Expected byte strings are the instruction examples printed in the ROBOTIS e-manual
(Protocol 2.0 page) or derived from the manual's rules by hand, never produced by the code
under test.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safetwin.robot_io import protocol as proto
from safetwin.robot_io.protocol import Instruction, Packet, PacketParser

H = bytes.fromhex

MANUAL_EXAMPLES = {
    "ping id1": (proto.ping(1), H("FF FF FD 00 01 03 00 01 19 4E")),
    "read id1 present position": (proto.read(1, 132, 4), H("FF FF FD 00 01 07 00 02 84 00 04 00 1D 15")),
    "write id1 goal 512": (proto.write(1, 116, (512).to_bytes(4, "little")),
                           H("FF FF FD 00 01 09 00 03 74 00 00 02 00 00 CA 89")),
    "sync read id1,2": (proto.sync_read([1, 2], 132, 4), H("FF FF FD 00 FE 09 00 82 84 00 04 00 01 02 CE FA")),
    "sync write id1=150,id2=170": (
        proto.sync_write(116, 4, {1: (150).to_bytes(4, "little"), 2: (170).to_bytes(4, "little")}),
        H("FF FF FD 00 FE 11 00 83 74 00 04 00 01 96 00 00 00 02 AA 00 00 00 82 87")),
    "reboot id1": (proto.reboot(1), H("FF FF FD 00 01 03 00 08 2F 4E")),
    "ping status XM430-W210 fw 38": (proto.encode_status(1, 0, H("06 04 26")),
                                     H("FF FF FD 00 01 07 00 55 00 06 04 26 65 5D")),
}


@pytest.mark.parametrize("name", sorted(MANUAL_EXAMPLES))
def test_encoding_matches_emanual_examples(name: str) -> None:
    built, expected = MANUAL_EXAMPLES[name]
    assert built == expected


def test_crc16_check_value() -> None:
    """CRC-16 poly 0x8005, init 0, unreflected: the catalogue check value of '123456789'."""
    assert proto.crc16(b"123456789") == 0xFEE8
    assert proto.CRC_TABLE[1] == 0x8005 and len(proto.CRC_TABLE) == 256


def test_stuffing_of_a_write_derived_by_hand() -> None:
    """C4: write 0x00FDFFFF to Goal Position(116) of id 1: FF FF FD in the data gets an FD.

    Field INST+params = 03 74 00 FF FF FD 00 -> stuffed 03 74 00 FF FF FD FD 00 (8 bytes),
    LEN = 8 + 2 CRC = 0x000A; the CRC covers the stuffed bytes.
    """
    frame = proto.write(1, 116, H("FF FF FD 00"))
    head = H("FF FF FD 00 01 0A 00 03 74 00 FF FF FD FD 00")
    assert frame[:-2] == head
    assert frame[-2:] == proto.crc16(head).to_bytes(2, "little")
    (packet,) = proto.parse_all(frame)
    assert packet == Packet(1, Instruction.WRITE, H("74 00 FF FF FD 00"))


@pytest.mark.parametrize("raw, stuffed", [
    ("FF FF FD", "FF FF FD FD"),
    ("FF FF FD FD", "FF FF FD FD FD"),
    ("FF FF FF FD", "FF FF FF FD FD"),
    ("FF FF FD FF FF FD", "FF FF FD FD FF FF FD FD"),
    ("FF FD FF FD", "FF FD FF FD"),
    ("FF FF FC", "FF FF FC"),
])
def test_stuffing_rules(raw: str, stuffed: str) -> None:
    assert proto.stuff(H(raw)) == H(stuffed)
    assert proto.unstuff(H(stuffed)) == H(raw)


def test_unstuff_rejects_missing_stuffing_byte() -> None:
    with pytest.raises(proto.ProtocolError, match="stuffing"):
        proto.unstuff(H("03 FF FF FD 00"))


def test_factory_reset_is_refused() -> None:
    with pytest.raises(proto.ProtocolError, match="refused"):
        proto.factory_reset(1)


@pytest.mark.parametrize("bad", [-1, 253, 255, 0xFD])
def test_bad_ids_are_refused(bad: int) -> None:
    with pytest.raises(proto.ProtocolError):
        proto.read(bad, 132, 4)


def test_status_error_byte_fields() -> None:
    (p,) = proto.parse_all(proto.encode_status(7, 0x80 | proto.ErrorCode.DATA_RANGE_ERROR, b""))
    assert p.is_status and p.alert and p.error_code == proto.ErrorCode.DATA_RANGE_ERROR
    assert proto.describe_error(p.error) == "DATA_RANGE_ERROR+ALERT"


ids = st.integers(0, proto.MAX_ID)
payloads = st.binary(max_size=64) | st.lists(st.sampled_from([0xFF, 0xFD, 0x00]), max_size=40).map(bytes)


@settings(max_examples=300, deadline=None)
@given(servo_id=ids, error=st.integers(0, 255), params=payloads)
def test_status_round_trip(servo_id: int, error: int, params: bytes) -> None:
    (p,) = proto.parse_all(proto.encode_status(servo_id, error, params))
    assert (p.servo_id, p.instruction, p.error, p.params) == (servo_id, Instruction.STATUS, error, params)


@settings(max_examples=300, deadline=None)
@given(servo_id=ids, params=payloads)
def test_stuffed_frame_never_contains_a_header_inside(servo_id: int, params: bytes) -> None:
    frame = proto.encode_packet(servo_id, Instruction.WRITE, params)
    body = frame[7:-2]
    assert proto.HEADER not in body
    at = body.find(proto.STUFF_PATTERN)
    while at >= 0:  # every FF FF FD inside is followed by the stuffing FD
        assert body[at + 3:at + 4] == b"\xfd"
        at = body.find(proto.STUFF_PATTERN, at + 4)
    assert proto.unstuff(proto.stuff(params)) == params


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=40), params=payloads, cuts=st.lists(st.integers(1, 9), max_size=20))
def test_parser_resynchronises_after_garbage_and_chunking(garbage: bytes, params: bytes, cuts: list[int]) -> None:
    """C2, C4: noise before the header and arbitrary chunk boundaries; the frame still decodes."""
    frame = proto.encode_status(3, 0, params)
    stream = garbage + frame + frame
    parser, got, pos = PacketParser(), [], 0
    for cut in cuts + [len(stream)]:
        got += parser.feed(stream[pos:pos + cut])
        pos += cut
    got += parser.feed(stream[pos:])
    want = Packet(3, Instruction.STATUS, params)
    assert got[-2:] == [want, want]
    assert all(p == want for p in got[-2:])


def test_partial_frame_waits_for_the_rest() -> None:
    """C2: a frame split in two is decoded only when its last byte arrives."""
    frame = proto.encode_status(2, 0, H("00 08 00 00"))
    parser = PacketParser()
    assert parser.feed(frame[:9]) == [] and parser.pending == 9
    assert parser.feed(frame[9:]) == [Packet(2, Instruction.STATUS, H("00 08 00 00"))]
    assert parser.pending == 0


def test_truncated_frame_followed_by_a_good_one() -> None:
    """C2: the truncated frame's header swallows the next frame, fails CRC, and the parser resyncs."""
    good = proto.encode_status(5, 0, H("11 22 33 44"))
    parser = PacketParser()
    got = parser.feed(good[:8] + good)
    assert got == [Packet(5, Instruction.STATUS, H("11 22 33 44"))]
    assert parser.stats.crc_errors >= 1


FRAMES = [proto.ping(1), proto.encode_status(1, 0, H("FC 03 2D")), proto.sync_read([1, 2, 3], 124, 23),
          proto.write(9, 116, H("FF FF FD 00")), proto.encode_status(4, 0x80, H("00 08 00 00 FF FF FD"))]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.hex()[:20])
def test_every_single_bit_flip_is_rejected(frame: bytes) -> None:
    """C3: all 8*len single-bit flips of valid frames decode to nothing (CRC-16 catches them)."""
    rejected = 0
    for bit in range(8 * len(frame)):
        flipped = bytearray(frame)
        flipped[bit // 8] ^= 1 << (bit % 8)
        parser = PacketParser()
        if parser.feed(bytes(flipped)) == []:
            rejected += 1
    assert rejected == 8 * len(frame)


def test_crc_error_is_counted_and_following_frame_survives() -> None:
    """C3: a corrupted frame is counted as a CRC error and does not hide the next frame."""
    bad = bytearray(proto.encode_status(1, 0, H("01 02")))
    bad[-3] ^= 0x10
    good = proto.encode_status(2, 0, H("03 04"))
    parser = PacketParser()
    assert parser.feed(bytes(bad) + good) == [Packet(2, Instruction.STATUS, H("03 04"))]
    assert parser.stats.crc_errors == 1


def test_absurd_length_is_skipped() -> None:
    """C4: a header with an impossible LEN is noise, not a reason to wait forever."""
    noise = H("FF FF FD 00 01 FF 7F")
    good = proto.encode_status(1, 0, b"")
    parser = PacketParser()
    assert parser.feed(noise + good) == [Packet(1, Instruction.STATUS, b"")]
    assert parser.stats.bad_length == 1


def test_sync_write_split_round_trip() -> None:
    data = {1: H("01 02"), 7: H("FF FF")}
    (p,) = proto.parse_all(proto.sync_write(64, 2, data))
    assert proto.split_sync_write(p.params) == (64, 2, data)
    with pytest.raises(proto.ProtocolError):
        proto.split_sync_write(p.params[:-1])


@settings(max_examples=400, deadline=None)
@given(chunks=st.lists(st.binary(max_size=48) | st.sampled_from(FRAMES), max_size=12))
def test_C4_fuzz_parser_never_raises_and_only_yields_real_frames(chunks: list[bytes]) -> None:
    """Arbitrary byte streams (noise mixed with valid frames): no exception, and every packet the
    parser yields re-encodes to bytes that really occur in the stream (no invented packets)."""
    stream = b"".join(chunks)
    parser = PacketParser()
    for chunk in chunks:
        for p in parser.feed(chunk):
            body = bytes([p.error]) + p.params if p.is_status else p.params
            assert proto.encode_packet(p.servo_id, p.instruction, body) in stream


def test_status_without_error_byte_is_rejected() -> None:
    bare = proto.encode_packet(1, Instruction.STATUS, b"")
    parser = PacketParser()
    assert parser.feed(bare) == [] and parser.stats.bad_length == 1
