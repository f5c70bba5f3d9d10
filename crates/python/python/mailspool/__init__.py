"""Queue mail durably into a mailspool spool, without a process per message.

    import mailspool
    spool = mailspool.Spool()  # found as the `mailspool` command finds it
    sent = spool.send_mail(b"From: app@example.com\\nTo: ops@example.org\\n"
                           b"Subject: hi\\n\\nhello\\n")
    print(sent.id, sent.recipients)

``send_mail`` returns once the message is in the spool for good (one node per
recipient, written and flushed to disk); ``mailspool daemon`` delivers it, retries it
for about four days and bounces what cannot be delivered. ``message`` is ``bytes``,
``str``, a path (``pathlib.Path`` or any ``os.PathLike``) or an
``email.message.EmailMessage``. ``to`` is one address or an iterable of them; without
it the recipients come from To, Cc and Bcc. ``sender`` is the envelope sender (``""``
for the null sender); without it, the From address. ``delivery`` is ``"deferred"``
(queue and return), ``"interactive"`` (deliver now and report each recipient in
``Sent.delivery``: one the server could not take now stays queued for retry; one
refused for good is neither kept nor bounced and raises ``NotDelivered``, whose ``id``
and ``delivery`` say what became of the others, so never call again for them) or
``"background"`` (try now, queue what is not delivered, bounce what fails). ``id`` chooses the message id (refused with ``IdInUse`` when it is
queued already). The Bcc header is never stored.

``send_many(messages, to=None, sender=None)`` queues many messages (deferred) with
shared disk flushes, several times faster than a call each; it returns, in order, a
``Sent`` or the ``MailspoolError`` (returned, not raised) of each message.

Failures raise a subclass of ``MailspoolError`` carrying ``kind`` and ``exit_code``
(sendmail's code: 75 means try again later, as do the ``TemporaryFailure`` classes
``SpoolFull``, ``SpoolUnavailable`` and ``Locked``). The GIL is released while a
message is parsed, written and committed, so threads can share one ``Spool``.
"""

from ._mailspool import (
    BadAddress,
    BadMessage,
    ConfigError,
    DeliveryResult,
    IdInUse,
    InternalError,
    InvalidId,
    IoError,
    Locked,
    MailspoolError,
    MessageTooLarge,
    NoInput,
    NoPermission,
    NoRecipients,
    NotDelivered,
    QueueEntry,
    QueueIter,
    Sent,
    Spool,
    SpoolFull,
    SpoolUnavailable,
    TemporaryFailure,
    __version__,
)

__all__ = [
    "BadAddress",
    "BadMessage",
    "ConfigError",
    "DeliveryResult",
    "IdInUse",
    "InternalError",
    "InvalidId",
    "IoError",
    "Locked",
    "MailspoolError",
    "MessageTooLarge",
    "NoInput",
    "NoPermission",
    "NoRecipients",
    "NotDelivered",
    "QueueEntry",
    "QueueIter",
    "Sent",
    "Spool",
    "SpoolFull",
    "SpoolUnavailable",
    "TemporaryFailure",
    "__version__",
]
