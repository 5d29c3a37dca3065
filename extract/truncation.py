"""Truncated files: what a header promises against what the file holds.

libsndfile quietly shortens a PCM file whose header declares more data than the file holds (a WAV
cut by an interrupted download reports, and decodes, only the bytes present), and an MP3's Xing/Info
header gives its full length however much of the stream follows. Two cheap, certain checks catch both:

* at open (and so at dataset discovery), for uncompressed PCM in WAV/RF64, AIFF/AIFC and Sun/NeXT
  ``.au``: :func:`declared_frames` reads the data size (or frame count) the header declares, and a
  file whose libsndfile frame count falls short of it is truncated;
* while decoding, any format: fewer frames decoded than the header promised (MP3 gets a slack of
  :func:`decode_slack` frames, since a header-less MP3's length is only an estimate).

Both report :func:`truncated_reason`, e.g. ``truncated: header says 30.0 s, file holds 0.4 s``.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["declared_frames", "decode_slack", "truncated_reason"]

#: bytes per sample of the uncompressed subtypes whose frame count follows from a byte count
_SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
                 "ULAW": 1, "ALAW": 1}
#: declared sizes that mean "unknown length" (streaming writers), never a promise
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
_MAX_CHUNKS = 256
_MP3_FRAME = 1152


def _riff_data_bytes(fh, magic: bytes) -> int | None:
    """Declared ``data`` chunk size of a RIFF/RIFX/RF64 WAVE file (``None`` when absent or unknown)."""
    endian = ">" if magic == b"RIFX" else "<"
    pos, ds64 = 12, None
    for _ in range(_MAX_CHUNKS):
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            return None
        cid, size = head[:4], struct.unpack(endian + "I", head[4:])[0]
        if cid == b"ds64":
            body = fh.read(16)
            ds64 = struct.unpack("<Q", body[8:16])[0] if len(body) == 16 else None
        elif cid == b"data":
            if magic == b"RF64" and size == 0xFFFFFFFF:
                return ds64 or None
            return None if size in _UNKNOWN_SIZES else size
        pos += 8 + size + (size & 1)
    return None


def _aiff_frames(fh) -> int | None:
    """``numSampleFrames`` of an AIFF/AIFC ``COMM`` chunk."""
    pos = 12
    for _ in range(_MAX_CHUNKS):
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            return None
        cid, size = head[:4], struct.unpack(">I", head[4:])[0]
        if cid == b"COMM":
            body = fh.read(6)
            return struct.unpack(">I", body[2:6])[0] if len(body) == 6 else None
        pos += 8 + size + (size & 1)
    return None


def declared_frames(path: str | Path, subtype: str, channels: int) -> int | None:
    """Frames the header of an uncompressed WAV/RF64, AIFF/AIFC or ``.au`` file declares.

    Args:
        path: the file; subtype, channels: as libsndfile reports them (``"PCM_16"``, 2, ...).

    Returns:
        The declared frame count, or ``None`` where the header declares no usable length (another
        container, a compressed subtype, a streaming header with an unknown size).
    """
    width = _SAMPLE_BYTES.get(subtype)
    with open(path, "rb") as fh:
        head = fh.read(12)
        magic, kind = head[:4], head[8:12]
        if magic in (b"RIFF", b"RIFX", b"RF64") and kind == b"WAVE" and width:
            size = _riff_data_bytes(fh, magic)
        elif magic == b"FORM" and kind in (b"AIFF", b"AIFC"):
            return _aiff_frames(fh)
        elif magic == b".snd" and len(head) >= 12 and width:
            size = struct.unpack(">I", head[8:12])[0]
            size = None if size in _UNKNOWN_SIZES else size
        else:
            return None
    return None if size is None else size // (width * channels)


def decode_slack(container: str, frames: int) -> int:
    """Frames a full decode may fall short of the header's ``frames`` without counting as truncated:
    0, except MP3 (whose length without a Xing/Info header is an estimate): 2 MPEG frames or 1 %."""
    return max(2 * _MP3_FRAME, frames // 100) if container == "MP3" else 0


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 1 else f"{s:.2g} s"


def truncated_reason(header_seconds: float, held_seconds: float | None, *, before: float = 0.0) -> str:
    """``truncated: header says 30.0 s, file holds 0.4 s`` (``held_seconds`` None: nothing decodes
    from ``before`` seconds on)."""
    if held_seconds is None:
        held = f"nothing decodes from {_seconds(before)} on" if before > 0 else "no audio decodes"
        return f"truncated: header says {_seconds(header_seconds)}, {held}"
    return f"truncated: header says {_seconds(header_seconds)}, file holds {_seconds(held_seconds)}"
