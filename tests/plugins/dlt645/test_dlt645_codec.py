"""The DL/T 645-2007 codec: round trips, frames published in implementations (with their
checksums, see protocols.md §2), and malformed frames that must never become a value."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openprepay.plugins.dlt645.codec import (
    FRAMING,
    Frame,
    FrameError,
    Function,
    RemoteAction,
    check_answer,
    decode,
    describe_error,
    from_bcd,
    read_address_request,
    read_request,
    remote_control_request,
    time_from_bytes,
    time_sync_request,
    to_bcd,
)
from openprepay.plugins.dlt645.profile import PointFormat

addresses = st.text("0123456789", min_size=12, max_size=12)


def hexb(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@given(addresses, st.integers(0, 0xFF), st.binary(max_size=200))
def test_any_frame_round_trips(address: str, control: int, data: bytes) -> None:
    frame = Frame(address, control, data)
    raw = frame.encode()
    assert decode(raw) == frame
    assert decode(b"\xfe\xfe\xfe\xfe" + raw) == frame
    assert FRAMING.scan(b"\xfe\xfe" + raw + b"\x00").end == 2 + len(raw)


@given(st.integers(0, 10**8 - 1))
def test_bcd_round_trips(value: int) -> None:
    assert from_bcd(to_bcd(value, 4)) == value


@given(st.integers(-799999, 799999))
def test_signed_bcd_round_trips(count: int) -> None:
    value = count / 10**4
    fmt = PointFormat("p", 3, 4, signed=True)
    assert fmt.decode(fmt.encode(float(value))) == pytest.approx(float(value), abs=1e-9)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))
def test_time_round_trips(at: datetime) -> None:
    frame = time_sync_request(at.replace(microsecond=0))
    assert time_from_bytes(decode(frame.encode()).data) == at.replace(microsecond=0)


# -- frames published by implementations (protocols.md §2, source index ids) ------------------
@pytest.mark.parametrize(
    ("published", "address", "di"),
    [
        # index 43166134357: read forward active energy of meter 000000000001
        ("68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16", "000000000001", 0x00010000),
        # index 22290515293: the same read to meter 398192000337
        ("68 37 03 00 92 81 39 68 11 04 33 33 34 33 38 16", "398192000337", 0x00010000),
        # index 43831992071
        ("68 16 00 00 00 15 20 68 11 04 33 33 34 33 FD 16", "201500000016", 0x00010000),
        # index 25022567264: the wildcard address, with the FE FE FE FE wake-up
        (
            "FE FE FE FE 68 AA AA AA AA AA AA 68 11 04 33 33 34 33 AE 16",
            "AAAAAAAAAAAA",
            0x00010000,
        ),
    ],
)
def test_published_read_requests_are_what_we_send(published: str, address: str, di: int) -> None:
    raw = hexb(published)
    ours = read_request(address, di).encode()
    assert raw.endswith(ours)
    frame = decode(raw)
    assert (frame.address, frame.function, frame.data) == (address, Function.READ, hexb("00000100"))


def test_published_read_address_frame() -> None:
    # protocols.md §2 [G2]: 68 AA×6 68 13 00 DF 16
    assert read_address_request().encode() == hexb("68 AA AA AA AA AA AA 68 13 00 DF 16")


def test_published_energy_answer_decodes_to_its_value() -> None:
    # index 22453226609: meter 398192000337 answers 91 with DI 00010000 and 0.04 kWh.
    raw = hexb("68 37 03 00 92 81 39 68 91 08 33 33 34 33 37 33 33 33 8C 16")
    request = read_request("398192000337", 0x00010000)
    answer = check_answer(decode(raw), request)
    assert answer.is_reply and not answer.is_error and not answer.follows
    assert PointFormat("energy", 4, 2).decode(answer.data[4:]) == 0.04


def test_remote_trip_layout() -> None:
    # 68 A 68 1C 10 [PA P0P1P2][C0..C3][1A][00][ss mm hh DD MM YY] CS 16, all +33H
    frame = remote_control_request(
        "000012345678", RemoteAction.TRIP, "02123456", "00000001", datetime(2026, 3, 4, 5, 6, 7)
    )
    raw = frame.encode()
    assert raw[8:10] == bytes([0x1C, 0x10])
    plain = bytes((b - 0x33) & 0xFF for b in raw[10:-2])
    assert plain == hexb("02 56 34 12 01 00 00 00 1A 00 07 06 05 04 03 26")


def test_error_answer_names_its_bits() -> None:
    assert describe_error(0x04) == "wrong password or not authorized"
    assert describe_error(0x03) == "other error, no such data (DI not supported)"
    request = read_request("000012345678", 0x04000503)
    answer = check_answer(decode(Frame("000012345678", 0xD1, b"\x02").encode()), request)
    assert answer.is_error and answer.data == b"\x02"


# -- malformed frames ---------------------------------------------------------------------------
GOOD = Frame("000012345678", 0x91, hexb("00 00 01 00 56 34 12 00")).encode()
REQUEST = read_request("000012345678", 0x00010000)


def _resum(raw: bytes) -> bytes:
    return raw[:-2] + bytes([sum(raw[:-2]) & 0xFF, 0x16])


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (GOOD[:-2] + bytes([GOOD[-2] ^ 1, 0x16]), "checksum"),
        (GOOD[:-3], "length byte says 8"),
        (GOOD[:9], "shorter than the 12"),
        (GOOD[:-1] + b"\x17", "end byte"),
        (GOOD[1:], "start byte"),  # start byte missing
        (GOOD[:1] + b"\xfe" + GOOD[1:], "second start byte"),  # preamble spilled in
        (b"\xfe\xfe\xfe\xfe", "only preamble"),
    ],
)
def test_malformed_frames_raise(raw: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        decode(raw)


def test_preamble_of_any_length_is_tolerated_and_gives_the_same_frame() -> None:
    # The standard makes the FE wake-up optional (meters send 0..4): same frame, same value.
    for n in range(0, 6):
        assert decode(b"\xfe" * n + GOOD) == decode(GOOD)


def test_wrong_address_echo_is_refused() -> None:
    other = Frame("000012345679", 0x91, hexb("00 00 01 00 56 34 12 00")).encode()
    with pytest.raises(FrameError, match="answer from address 000012345679"):
        check_answer(decode(other), REQUEST)


def test_data_without_the_33h_offset_is_refused() -> None:
    # A meter (or a gateway) that forgets +33H: the DI no longer echoes.
    raw = bytearray(GOOD)
    raw[10:-2] = bytes((b - 0x33) & 0xFF for b in raw[10:-2])
    with pytest.raises(FrameError, match="answer for DI"):
        check_answer(decode(_resum(bytes(raw))), REQUEST)


def test_data_with_33h_added_twice_is_refused() -> None:
    raw = bytearray(GOOD)
    raw[10:-2] = bytes((b + 0x33) & 0xFF for b in raw[10:-2])
    with pytest.raises(FrameError, match="answer for DI"):
        check_answer(decode(_resum(bytes(raw))), REQUEST)


def test_request_echoed_back_is_not_an_answer() -> None:
    with pytest.raises(FrameError, match="not an answer"):
        check_answer(decode(REQUEST.encode()), REQUEST)


def test_non_bcd_value_is_refused() -> None:
    with pytest.raises(FrameError, match="not BCD"):
        PointFormat("energy", 4, 2).decode(hexb("00 00 0A 00"))
