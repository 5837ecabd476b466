"""Modbus frames as bytes: the requests the client sends and the checks on what comes back.

Two framings carry the same PDU (function code + data):

- RTU (serial lines and TCP-to-RS-485 gateways): unit, PDU, CRC-16 (polynomial 0xA001,
  low byte first). A frame has no length field: its length follows from the function
  code and, for reads, the byte count.
- Modbus TCP: a 7-byte MBAP header (transaction id, protocol id 0, length of what follows,
  unit), then the PDU; no checksum.

Only what the transport needs: reads of holding/input registers (3, 4), writes of one or
several registers (6, 16), and exception answers (function code | 0x80).
"""

from __future__ import annotations

import struct

from openprepay.core.config.site import LinkType

#: A PDU reading or writing one register: function, address, count or value.
ADDRESS_AND_WORD = struct.Struct(">BHH")
#: The head of a write-multiple PDU: function, address, count, byte count.
WRITE_MULTIPLE_HEAD = struct.Struct(">BHHB")
#: The MBAP header: transaction id, protocol id, length, unit.
MBAP = struct.Struct(">HHHB")
#: What of the MBAP header delimits a frame: transaction id, protocol id, length.
MBAP_HEAD = struct.Struct(">HHH")
#: The longest PDU the standard allows (a 256-byte RTU frame minus unit and CRC).
MAX_PDU = 253
#: Bytes of a bad answer kept to say what was wrong with it.
KEEP_BYTES = 64

READS = (3, 4)
WRITES = (6, 16)
#: RTU answer length of the functions whose answer has a fixed size.
FIXED_ANSWER_SIZE = {5: 8, 6: 8, 15: 8, 16: 8}
#: An exception answer on RTU: unit, function | 0x80, code, CRC.
EXCEPTION_SIZE = 5


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """Modbus CRC-16 of `data`. Over a whole frame, CRC included, it is 0 when intact."""
    crc = 0xFFFF
    table = CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    frame = bytes((unit,)) + pdu
    return frame + crc16(frame).to_bytes(2, "little")


def mbap_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


def read_pdu(function: int, address: int, count: int) -> bytes:
    return ADDRESS_AND_WORD.pack(function, address, count)


def write_pdu(function: int, address: int, words: list[int]) -> bytes:
    if function == 6:
        return ADDRESS_AND_WORD.pack(6, address, words[0])
    head = WRITE_MULTIPLE_HEAD.pack(16, address, len(words), 2 * len(words))
    return head + struct.pack(f">{len(words)}H", *words)


def echoes_write(request_pdu: bytes, answer_pdu: bytes) -> bool:
    """Whether `answer_pdu` is the answer to the write `request_pdu`: its function and
    address, and for 16 the count, in a PDU of the right length.

    The value a single-register write (6) answers with is not compared: the standard says
    it echoes the request, but pymodbus' server (our simulators) and devices whose command
    registers clear themselves answer with the register as it is after the write. What a
    command did is confirmed by reading the device back, never by this answer."""
    size = ADDRESS_AND_WORD.size
    if len(answer_pdu) != size:
        return False
    if request_pdu[0] == 6:
        return answer_pdu[:3] == request_pdu[:3]
    return answer_pdu == request_pdu[:size]


def answer_start(unit: int, pdu: bytes) -> bytes:
    """How an RTU answer to `pdu` sent to `unit` begins: unit, function, and the byte count
    (reads) or the address (writes). A frame that begins otherwise answers another request."""
    if pdu[0] in READS:
        count = int.from_bytes(pdu[3:5], "big")
        return bytes((unit, pdu[0], min(2 * count, 0xFF)))
    return bytes((unit,)) + pdu[:3]


def rtu_answer_size(buffer: bytes | bytearray, start: int) -> int | None:
    """Length of the RTU answer that begins at `start`; 0 when not yet known (too few
    bytes), None when the function code gives no length (the framing is lost)."""
    available = len(buffer) - start
    if available < 2:
        return 0
    function = buffer[start + 1]
    if function & 0x80:
        return EXCEPTION_SIZE
    if function in READS:
        return 5 + buffer[start + 2] if available >= 3 else 0
    return FIXED_ANSWER_SIZE.get(function)


def describe_frame(data: bytes, link_type: LinkType) -> str:
    """Why an answer that arrived could not be used, in the framing's own terms."""
    if link_type is not LinkType.MODBUS_TCP:
        if len(data) < 4:
            return f"RTU frame of {len(data)} bytes, too short"
        return "RTU frame with a CRC or length error, or a PDU that cannot be decoded"
    if len(data) < 8:
        return f"Modbus TCP frame of {len(data)} bytes, shorter than an MBAP header and PDU"
    protocol = int.from_bytes(data[2:4], "big")
    if protocol:
        return f"MBAP protocol id {protocol}, expected 0"
    length = int.from_bytes(data[4:6], "big")
    if len(data) - 6 < length:
        return f"MBAP length {length} but only {len(data) - 6} bytes followed"
    return f"MBAP frame with function code 0x{data[7]:02X} that cannot be decoded"
