"""Messages per second from Python into a mailspool spool, by three routes, in one run:
the `mailspool` package (one call per message, durable on return; and `send_many`), a
`sendmail` process per message (mailspool's own, then Postfix's as the peer), and
smtplib over an SMTP session into `mailspool serve`; one caller, then 8 threads. Called by bench/bindings; prints a Markdown table.

    python bench/bindings.py SECONDS CONFIG SPOOL SENDMAIL SERVE_PORT [POSTFIX_SENDMAIL]
"""

import os
import smtplib
import subprocess
import sys
import threading
import time

import mailspool

seconds, config, spool_dir, sendmail, port = sys.argv[1:6]
postfix = sys.argv[6] if len(sys.argv) > 6 else None
seconds = float(seconds)
port = int(port)

BODY = ("All work and no play makes Jack a dull boy. " * 20 + "\n") * 2


def message(i):
    return (
        f"From: bench@sender.test\nTo: rcpt{i % 50}@example.org\n"
        f"Subject: bindings bench {i}\n\n{BODY}"
    ).encode()


def timed(name, send_one, threads=1, per_call=1):
    """Run send_one(i) for `seconds` on `threads` threads; returns messages/s (each call
    sends `per_call` messages)."""
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def work(t):
        i = t
        while time.monotonic() < stop:
            send_one(i)
            counts[t] += per_call
            i += threads

    start = time.monotonic()
    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    rate = sum(counts) / (time.monotonic() - start)
    print(f"  {name}: {sum(counts)} messages, {rate:.0f}/s", file=sys.stderr)
    return rate


spool = mailspool.Spool(config, spool=spool_dir)


def package(i):
    spool.send_mail(message(i))


env = dict(os.environ, MAILSPOOL_CONFIG=config, MAILSPOOL_SPOOL=spool_dir)


def via_sendmail(program):
    def send(i):
        subprocess.run([program, "-t", "-i"], input=message(i), env=env, check=True)

    return send


session = {}


def via_smtplib(i):
    s = session.get(threading.get_ident())
    if s is None:
        s = session[threading.get_ident()] = smtplib.SMTP("127.0.0.1", port)
    # smtplib sends bytes as they are: SMTP wants CRLF line ends.
    s.sendmail("bench@sender.test", [f"rcpt{i % 50}@example.org"],
               message(i).replace(b"\n", b"\r\n"))


def batches_of(n):
    def send(i):
        for r in spool.send_many([message(i * n + k) for k in range(n)]):
            if isinstance(r, Exception):
                raise r

    return send


print("measuring (each route for %.0f s):" % seconds, file=sys.stderr)
pkg1 = timed("package, 1 thread", package)
sm1 = timed("mailspool sendmail per message, 1 at a time", via_sendmail(sendmail))
if os.environ.get("BENCH_ROUTES") == "core":
    # The spool on tmpfs: what each route costs besides the disk's flushes.
    print(f"| route, spool on tmpfs (no flush cost) | msgs/s | package ÷ route |")
    print("| --- | ---: | ---: |")
    print(f"| `Spool.send_mail`, 1 caller | {pkg1:.0f} | 1.00 |")
    print(f"| `subprocess` → mailspool `sendmail -t -i` | {sm1:.0f} | **{pkg1 / sm1:.1f}×** |")
    sys.exit(0)
smtp1 = timed("smtplib, one session, into mailspool serve", via_smtplib)
pf1 = timed("Postfix sendmail per message, 1 at a time", via_sendmail(postfix)) if postfix else None
pkg8 = timed("package, 8 threads", package, threads=8)
sm8 = timed("mailspool sendmail per message, 8 at a time", via_sendmail(sendmail), threads=8)
smtp8 = timed("smtplib, 8 sessions, into mailspool serve", via_smtplib, threads=8)
batch = timed("package, send_many of 100, 1 thread", batches_of(100), per_call=100)
pkg1b = timed("package, 1 thread (again, for drift)", package)
for s in session.values():
    s.quit()

print("| route (Python 3) | 1 caller: msgs/s | package ÷ route | 8 threads: msgs/s | package ÷ route |")
print("| --- | ---: | ---: | ---: | ---: |")
print(f"| `Spool.send_mail` | {pkg1:.0f} (at the end: {pkg1b:.0f}) | 1.00 | {pkg8:.0f} | 1.00 |")
print(f"| `subprocess` → mailspool `sendmail -t -i` | {sm1:.0f} | **{pkg1 / sm1:.1f}×** | {sm8:.0f} | **{pkg8 / sm8:.1f}×** |")
print(f"| `smtplib` → `mailspool serve` (a session per thread) | {smtp1:.0f} | {pkg1 / smtp1:.1f}× | {smtp8:.0f} | {pkg8 / smtp8:.1f}× |")
if pf1:
    print(f"| `subprocess` → Postfix `sendmail -t -i` (peer) | {pf1:.0f} | {pkg1 / pf1:.1f}× | | |")
print(f"| `Spool.send_many`, batches of 100 | {batch:.0f} | vs mailspool sendmail: **{batch / sm1:.1f}×** | | |")
print()
print(f"package vs mailspool sendmail per message: 1 caller {pkg1 / sm1:.1f}x, 8 threads "
      f"{pkg8 / sm8:.1f}x, send_many {batch / sm1:.1f}x (target >= 10x)")
