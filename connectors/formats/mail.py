"""Saved mail: .eml with the standard library's `email`, Outlook's .msg with extract-msg.

A message is one page: its subject, sender, recipients and date, then its body (the plain-text part,
else the HTML part's text). Its attachments come back as `Attachment`s; the filesystem source lists
those of a format it reads as documents of their own under the message's id.
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser

from ..base import Page
from ..errors import DocumentError
from . import Attachment, FormatLimits, Parsed, unreadable_as
from .web import html_text


def read_eml(data: bytes, limits: FormatLimits) -> Parsed:
    with unreadable_as("e-mail message"):
        message: EmailMessage = BytesParser(policy=email.policy.default).parsebytes(data)
        headers = {name: str(message.get(name, "") or "") for name in ("Subject", "From", "To", "Cc", "Date")}
        body_part = message.get_body(preferencelist=("plain", "html"))
        body = ""
        if body_part is not None:
            content = body_part.get_content()
            body = html_text(content).pages[0].text if body_part.get_content_subtype() == "html" else content
        attachments = tuple(Attachment(part.get_filename() or f"attachment-{index}", part.get_payload(decode=True)
                                       or b"")
                            for index, part in enumerate(message.iter_attachments(), 1))
    if not any(headers.values()) and not body.strip():
        raise DocumentError("not an e-mail message (no headers, no body)")
    return _message(headers, body, attachments)


def read_msg(data: bytes, limits: FormatLimits) -> Parsed:
    import extract_msg

    with unreadable_as("Outlook message"):
        message = extract_msg.openMsg(data)
        try:
            headers = {"Subject": message.subject, "From": message.sender, "To": message.to, "Cc": message.cc,
                       "Date": str(message.date or "")}
            body = message.body or ""
            if not body.strip() and message.htmlBody:
                body = html_text(message.htmlBody).pages[0].text
            attachments = tuple(Attachment(attachment.getFilename() or f"attachment-{index}", attachment.data)
                                for index, attachment in enumerate(message.attachments, 1)
                                if isinstance(attachment.data, bytes))
        finally:
            message.close()
    return _message({name: value or "" for name, value in headers.items()}, body, attachments)


def _message(headers: dict[str, str], body: str, attachments: tuple[Attachment, ...]) -> Parsed:
    lines = [f"{name}: {value}" for name, value in headers.items() if value]
    if attachments:
        lines.append("Attachments: " + ", ".join(attachment.name for attachment in attachments))
    return Parsed((Page(None, "\n".join(lines) + "\n\n" + body.strip()),), headers["Subject"] or None,
                  attachments)
