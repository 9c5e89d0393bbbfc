"""Checks an Office file's zip before any library parses it: encryption, size, members, macros, DTDs.

Word, PowerPoint and Excel files are zip archives of XML parts. Everything here is read from the
zip's central directory or from the first bytes of a part, so a zip bomb is refused before anything
is decompressed in bulk; and the `zipfile` module stops every member at the size its directory
declares, so a directory that lies cannot make the libraries decompress more than was checked.
"""

from __future__ import annotations

import io
import re
import zipfile

from ..errors import DocumentError
from . import FormatLimits

# An encrypted (password-protected) Office file is not a zip: it is an OLE compound file holding
# the encrypted package (MS-OFFCRYPTO).
OLE_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# XML before its root element: a DTD may only appear there. Office parts never carry one, so a part
# that does is refused (entity expansion: "billion laughs", external entities).
PROLOG_BYTES = 64 * 1024
ROOT_ELEMENT = re.compile(rb"<[A-Za-z_]")
COMMENT = re.compile(rb"<!--.*?-->", re.DOTALL)
MACRO_PART = re.compile(r"(^|/)vbaProject\.bin$", re.IGNORECASE)


def open_office_zip(data: bytes, limits: FormatLimits, kind: str) -> zipfile.ZipFile:
    """The file's zip, checked; DocumentError names what is wrong with it. `kind`: "Word", "Excel"…"""
    if data.startswith(OLE_SIGNATURE):
        raise DocumentError(f"password-protected (encrypted) {kind} file: remove its password and save it "
                            "again, or exclude it")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise DocumentError(f"not a readable {kind} file (its zip is corrupt or truncated: {exc})") from exc
    if len(members) > limits.max_archive_members:
        raise DocumentError(f"{kind} file holds {len(members)} zip members, over max_archive_members = "
                            f"{limits.max_archive_members} (a zip bomb?)")
    unpacked = sum(member.file_size for member in members)
    if unpacked > limits.max_unpacked_bytes:
        raise DocumentError(f"{kind} file unpacks to {unpacked / 2**20:.0f} MiB, over max_unpacked_mb = "
                            f"{limits.max_unpacked_bytes / 2**20:g} (a zip bomb?); nothing was unpacked")
    for member in members:
        if member.flag_bits & 0x1:
            raise DocumentError(f"{kind} file has an encrypted zip member {member.filename!r}: remove the "
                                "password, or exclude it")
        if MACRO_PART.search(member.filename):
            raise DocumentError(f"{kind} file carries a macro project ({member.filename}), which this format "
                                "cannot hold: a renamed macro-enabled file; it is not read (macros never run)")
    for member in members:
        if member.filename.lower().endswith((".xml", ".rels")):
            _refuse_dtd(archive, member, kind)
    return archive


def _refuse_dtd(archive: zipfile.ZipFile, member: zipfile.ZipInfo, kind: str) -> None:
    try:
        with archive.open(member) as part:
            head = part.read(PROLOG_BYTES)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise DocumentError(f"not a readable {kind} file (zip member {member.filename!r}: {exc})") from exc
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        head = head.decode("utf-16", "replace").encode("utf-8")
    head = COMMENT.sub(b"", head)
    root = ROOT_ELEMENT.search(head)
    prolog = head[:root.start()] if root and b"<!--" not in head[:root.start()] else None
    if prolog is None:
        raise DocumentError(f"{kind} file's part {member.filename!r} has no root element in its first "
                            f"{PROLOG_BYTES // 1024} KiB: refused (not an Office part)")
    if b"<!doctype" in prolog.lower():
        raise DocumentError(f"{kind} file's part {member.filename!r} declares a DTD, which Office files never "
                            "do (XML entity expansion?): refused")
