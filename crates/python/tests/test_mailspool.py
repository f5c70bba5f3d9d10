"""The Python package against a temporary spool: what send_mail writes is checked on
the spool's own files (0.50 node names TIME-ID-TO-FROM in tier 0, one per recipient,
no Bcc header, mode 0600, nothing left in tmp/), errors map to their classes, and the
GIL is released while a message is committed or delivered.

Run by tests/pytest.rs (cargo's test run) after installing the wheel into a venv."""

import email.message
import email.policy
import os
import pathlib
import socketserver
import stat
import sys
import threading

import pytest

import mailspool

MSG = (
    b"From: App <app@sender.test>\n"
    b"To: one@rcpt.test, Two <two@rcpt.test>\n"
    b"Cc: three@rcpt.test\n"
    b"Bcc: secret@rcpt.test\n"
    b"Subject: from python\n"
    b"\n"
    b"hello from python\n"
)


@pytest.fixture
def spool_dir(tmp_path, monkeypatch):
    config = tmp_path / "mailspool.toml"
    config.write_text('hostname = "test.host"\n')
    monkeypatch.setenv("MAILSPOOL_CONFIG", str(config))
    monkeypatch.delenv("MAILSPOOL_SPOOL", raising=False)
    return tmp_path / "spool"


@pytest.fixture
def spool(spool_dir):
    return mailspool.Spool(spool=spool_dir)


def nodes(spool_dir):
    """(id, to, from, path) of each node in tier 0 (the tests' addresses have no '-')."""
    tier = spool_dir / "0"
    if not tier.exists():
        return []
    out = []
    for p in sorted(tier.iterdir()):
        if p.name.startswith(".") or p.name.endswith(".NFSLock"):
            continue
        _time, ident, to, sender = p.name.split("-", 3)
        out.append((ident, to, sender, p))
    return out


def recipients_of(spool_dir, ident):
    return sorted(to for i, to, _, _ in nodes(spool_dir) if i == ident)


def header_block(path):
    return path.read_bytes().split(b"\n\n", 1)[0]


def test_installed_from_the_wheel():
    # The venv's copy, not a source tree's.
    assert mailspool.__file__.startswith(sys.prefix), mailspool.__file__
    assert mailspool.__version__


def test_bytes_recipients_from_headers(spool, spool_dir):
    sent = spool.send_mail(MSG)
    assert isinstance(sent, mailspool.Sent)
    assert sorted(sent.recipients) == [
        "one@rcpt.test",
        "secret@rcpt.test",
        "three@rcpt.test",
        "two@rcpt.test",
    ]
    assert sent.sender == "app@sender.test"
    assert sent.delivery is None
    assert recipients_of(spool_dir, sent.id) == sorted(sent.recipients)
    for ident, _to, sender, path in nodes(spool_dir):
        assert ident == sent.id and sender == "app@sender.test"
        assert b"secret@" not in header_block(path), "Bcc stored"
        assert path.read_bytes().endswith(b"\n\nhello from python\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_size == sent.size
    assert list((spool_dir / "tmp").iterdir()) == [], "a stage was left behind"


def test_str_path_and_email_message(spool, spool_dir, tmp_path):
    sent = spool.send_mail(MSG.decode())
    assert len(recipients_of(spool_dir, sent.id)) == 4

    path = tmp_path / "message.eml"
    path.write_bytes(MSG)
    sent = spool.send_mail(path, to="file@rcpt.test")
    assert recipients_of(spool_dir, sent.id) == ["file@rcpt.test"]
    sent = spool.send_mail(pathlib.PurePath(path), to="purepath@rcpt.test")
    assert recipients_of(spool_dir, sent.id) == ["purepath@rcpt.test"]

    m = email.message.EmailMessage()
    m["From"] = "Zoë <zoe@sender.test>"
    m["To"] = "em@rcpt.test"
    m["Bcc"] = "hidden@rcpt.test"
    m["Subject"] = "naïve café"
    m.set_content("body ünïcode\n")
    sent = spool.send_mail(m)
    assert recipients_of(spool_dir, sent.id) == ["em@rcpt.test", "hidden@rcpt.test"]
    assert sent.sender == "zoe@sender.test"
    for ident, _to, _s, p in nodes(spool_dir):
        if ident == sent.id:
            head = header_block(p)
            assert b"hidden@" not in head
            assert b"Subject: =?utf-8?" in head
            parsed = email.message_from_bytes(p.read_bytes(), _class=email.message.EmailMessage,
                                              policy=email.policy.default)
            assert parsed.get_content() == "body ünïcode\n"


def test_explicit_envelope(spool, spool_dir):
    sent = spool.send_mail(MSG, to="solo@rcpt.test", sender="")
    assert sent.recipients == ["solo@rcpt.test"] and sent.sender == ""
    assert [(t, s) for i, t, s, _ in nodes(spool_dir) if i == sent.id] == [("solo@rcpt.test", "")]
    sent = spool.send_mail(MSG, to=("a@rcpt.test", "B <b@rcpt.test>"), sender="env@sender.test")
    assert recipients_of(spool_dir, sent.id) == ["a@rcpt.test", "b@rcpt.test"]
    sent = spool.send_mail(MSG, to=iter(["gen@rcpt.test"]), delivery="Standard")
    assert recipients_of(spool_dir, sent.id) == ["gen@rcpt.test"]


def test_chosen_id_and_id_in_use(spool, spool_dir):
    assert spool.send_mail(MSG, to="x@rcpt.test", id="PyId.1").id == "PyId.1"
    with pytest.raises(mailspool.IdInUse) as e:
        spool.send_mail(MSG, to="y@rcpt.test", id="PyId.1")
    assert isinstance(e.value, mailspool.MailspoolError)
    assert e.value.kind == "IdInUse" and e.value.exit_code == 65
    with pytest.raises(mailspool.InvalidId):
        spool.send_mail(MSG, id="../../etc/passwd")
    assert recipients_of(spool_dir, "PyId.1") == ["x@rcpt.test"]


def test_refusals_leave_nothing(spool, spool_dir, tmp_path):
    spool.send_mail(MSG, to="first@rcpt.test")
    before = nodes(spool_dir)
    with pytest.raises(mailspool.BadAddress) as e:
        spool.send_mail(MSG, to="not an address")
    assert e.value.exit_code == 65
    with pytest.raises(mailspool.BadAddress):
        spool.send_mail(MSG, sender="bad sender@")
    with pytest.raises(mailspool.NoRecipients):
        spool.send_mail(b"Subject: nobody\n\nx\n")
    with pytest.raises(mailspool.NoInput) as e:
        spool.send_mail(tmp_path / "missing.eml", to="x@rcpt.test")
    assert e.value.exit_code == 66
    with pytest.raises(mailspool.BadMessage):
        spool.send_mail(b"Subject: a\x00b\n\nx\n", to="x@rcpt.test")
    with pytest.raises(TypeError):
        spool.send_mail(42)
    with pytest.raises(TypeError):
        spool.send_mail(MSG, to=[1, 2])
    with pytest.raises(ValueError):
        spool.send_mail(MSG, delivery="someday")
    assert nodes(spool_dir) == before
    assert list((spool_dir / "tmp").iterdir()) == []


def test_size_limit(tmp_path, monkeypatch):
    config = tmp_path / "small.toml"
    config.write_text('hostname = "test.host"\nmax_message_size = 2000\n')
    spool = mailspool.Spool(config, spool=tmp_path / "s")
    spool.send_mail(MSG, to="fits@rcpt.test")
    with pytest.raises(mailspool.MessageTooLarge) as e:
        spool.send_mail(MSG + b"x" * 3000 + b"\n", to="big@rcpt.test")
    assert "2000" in str(e.value)
    assert [t for _, t, _, _ in nodes(tmp_path / "s")] == ["fits@rcpt.test"]


def test_found_like_the_command(spool_dir, monkeypatch):
    monkeypatch.setenv("MAILSPOOL_SPOOL", str(spool_dir))
    spool = mailspool.Spool()
    assert spool.location == str(spool_dir)
    sent = spool.send_mail(MSG, to="env@rcpt.test")
    assert recipients_of(spool_dir, sent.id) == ["env@rcpt.test"]
    with pytest.raises(mailspool.ConfigError):
        mailspool.Spool(spool_dir.parent / "no-such.toml")


def test_queue_entries(spool, spool_dir):
    sent = spool.send_mail(MSG)
    it = spool.queue()
    assert iter(it) is it, "queue() yields entries"
    entries = list(it)
    assert entries and list(it) == []
    assert all(isinstance(e, mailspool.QueueEntry) for e in entries)
    mine = sorted((e for e in entries if e.id == sent.id), key=lambda e: e.to)
    assert [e.to for e in mine] == sorted(sent.recipients)
    e = mine[0]
    assert (e.sender, e.tier, e.held, e.size, e.last_error) == (
        "app@sender.test", 0, False, sent.size, None)
    assert e.due_at >= e.queued_at > 0
    assert (spool_dir / "0" / e.node).exists()


def test_send_many_commits_each_or_reports_it(spool, spool_dir):
    good = [MSG, b"To: many@rcpt.test\nSubject: 2\n\nsecond\n"]
    results = spool.send_many([good[0], b"Subject: nobody\n\nx\n", good[1]])
    assert len(results) == 3
    assert isinstance(results[0], mailspool.Sent) and isinstance(results[2], mailspool.Sent)
    assert isinstance(results[1], mailspool.NoRecipients)
    assert results[1].exit_code == 64
    assert len(recipients_of(spool_dir, results[0].id)) == 4
    assert recipients_of(spool_dir, results[2].id) == ["many@rcpt.test"]
    assert len(nodes(spool_dir)) == 5
    assert list((spool_dir / "tmp").iterdir()) == []
    # An explicit envelope applies to every message.
    results = spool.send_many((m for m in good), to="all@rcpt.test", sender="")
    assert [(t, s) for r in results for i, t, s, _ in nodes(spool_dir) if i == r.id] == [
        ("all@rcpt.test", ""),
        ("all@rcpt.test", ""),
    ]
    assert spool.send_many([]) == []


def test_threads_share_one_spool(spool, spool_dir):
    ids, errors = [], []

    def work(n):
        try:
            for i in range(25):
                ids.append(spool.send_mail(b"Subject: t\n\nx\n", to=f"t{n}@rcpt.test").id)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 200
    assert len(nodes(spool_dir)) == 200


class Sink(socketserver.ThreadingTCPServer):
    """An SMTP receiver in pure Python: it can only answer while the GIL is free."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.messages = []


class SinkHandler(socketserver.StreamRequestHandler):
    def handle(self):
        w = self.wfile.write
        w(b"220 sink.test ESMTP\r\n")
        rcpts = []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                w(b"250 sink.test\r\n")
            elif verb == b"RCPT":
                if b"reject" in line:
                    w(b"550 5.1.1 no such user\r\n")
                elif b"later" in line:
                    w(b"451 4.2.1 mailbox busy, try later\r\n")
                else:
                    rcpts.append(line)
                    w(b"250 ok\r\n")
            elif verb == b"DATA":
                w(b"354 go\r\n")
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    chunk = self.rfile.readline(65536)
                    if not chunk:
                        return
                    data += chunk
                self.server.messages.append((rcpts, data))
                rcpts = []
                w(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                w(b"221 bye\r\n")
                return
            else:
                w(b"250 ok\r\n")


@pytest.fixture
def sink_spool(tmp_path, monkeypatch):
    sink = Sink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    port = sink.server_address[1]
    config = tmp_path / "deliver.toml"
    config.write_text(
        'hostname = "test.host"\ntls = "none"\n'
        f'[routes]\n"rcpt.test" = "127.0.0.1:{port}"\n'
        "[timeouts]\nconnect = 5\ncommand = 5\ngreeting = 5\ndata_end = 5\n"
    )
    monkeypatch.delenv("MAILSPOOL_SPOOL", raising=False)
    yield mailspool.Spool(config, spool=tmp_path / "spool"), sink, tmp_path / "spool"
    sink.shutdown()


def test_interactive_delivery_releases_the_gil(sink_spool):
    spool, sink, spool_dir = sink_spool
    # The sink is a Python thread: had send_mail kept the GIL, it could not answer and
    # the delivery would time out.
    sent = spool.send_mail(MSG, to="now@rcpt.test", delivery="interactive")
    assert [(r.recipient, r.outcome) for r in sent.delivery] == [("now@rcpt.test", "delivered")]
    assert len(sink.messages) == 1
    rcpts, data = sink.messages[0]
    assert rcpts == [b"RCPT TO:<now@rcpt.test>\r\n"]
    assert b"hello from python" in data and b"secret@" not in data
    assert nodes(spool_dir) == [], "interactive delivery keeps nothing"


def test_interactive_failure_raises_and_keeps_nothing(sink_spool):
    spool, _sink, spool_dir = sink_spool
    with pytest.raises(mailspool.NotDelivered) as e:
        spool.send_mail(MSG, to=["reject@rcpt.test"], delivery="interactive")
    assert "no such user" in str(e.value)
    assert e.value.exit_code == 69
    assert nodes(spool_dir) == []


def test_interactive_mixed_results_say_each_recipient_and_keep_the_deferred(sink_spool):
    spool, sink, spool_dir = sink_spool
    # Delivered and deferred: no exception (the message is accepted), the deferred
    # recipient queued for retry, and nothing a retrying caller would send twice.
    sent = spool.send_mail(MSG, to=["ok@rcpt.test", "later@rcpt.test"], delivery="interactive")
    got = {r.recipient: r.outcome for r in sent.delivery}
    assert got == {"ok@rcpt.test": "delivered", "later@rcpt.test": "deferred"}
    assert "mailbox busy" in [r.reply for r in sent.delivery if r.outcome == "deferred"][0]
    assert len(sink.messages) == 1
    queued = list(spool.queue())
    assert [(q.id, q.to, q.tier) for q in queued] == [(sent.id, "later@rcpt.test", 1)]

    # Delivered, deferred and refused: NotDelivered, which is not a TemporaryFailure and
    # carries 69, names every recipient's result, and keeps the deferred one only.
    with pytest.raises(mailspool.NotDelivered) as e:
        spool.send_mail(
            MSG,
            to=["ok2@rcpt.test", "later2@rcpt.test", "reject@rcpt.test"],
            delivery="interactive",
        )
    assert not isinstance(e.value, mailspool.TemporaryFailure)
    assert e.value.exit_code == 69
    text = str(e.value)
    assert "<ok2@rcpt.test>: delivered" in text
    assert "<later2@rcpt.test>: queued for retry" in text
    assert "<reject@rcpt.test>: failed" in text and "no such user" in text
    assert {r.recipient: r.outcome for r in e.value.delivery} == {
        "ok2@rcpt.test": "delivered",
        "later2@rcpt.test": "deferred",
        "reject@rcpt.test": "failed",
    }
    assert e.value.id in text
    assert sorted(q.to for q in spool.queue()) == ["later2@rcpt.test", "later@rcpt.test"]
    assert len(sink.messages) == 2


def test_background_delivery(sink_spool):
    spool, sink, spool_dir = sink_spool
    sent = spool.send_mail(MSG, to="bg@rcpt.test", delivery="background")
    assert [r.outcome for r in sent.delivery] == ["delivered"]
    assert len(sink.messages) == 1 and nodes(spool_dir) == []
