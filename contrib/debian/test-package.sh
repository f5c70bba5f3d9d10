#!/usr/bin/env bash
# The Debian package on a multi-user server, end to end (as root; run by
# crates/mailspool/tests/package.rs under CI, with SINK_PORT set to an SMTP sink):
# build and install the package, two unprivileged users each `sendmail -t -i` 50
# messages (the first 25 with the daemon stopped), the daemon runs as `mailspool`,
# every attack a user could try on the spool fails, then the package is purged and the
# machine left as it was. Prints "uid USER N" for each test user, then "PASS".
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${SINK_PORT:?the port of an SMTP sink}"
: "${HTTP_PORT:?a free port for the HTTP API of the daemon}"
export DEBIAN_FRONTEND=noninteractive

# Leave the machine as it was: run only where nothing of ours or another MTA's is.
if [ -e /var/spool/mailspool ] || [ -e /etc/mailspool ] || [ -e /usr/sbin/sendmail ] ||
    dpkg -s mailspool >/dev/null 2>&1; then
    echo "SKIP: this machine already has a mail system or a mailspool spool"
    exit 0
fi

users=(ms-alice ms-bob)
ours=() # packages this test installed besides mailspool (purged at the end)
installed() { dpkg-query -W -f '${Package}\n' 2>/dev/null | sort; }
apt_add() { # packages...: install them, and remember everything that came with them
    local before
    before=$(installed)
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
    mapfile -t -O "${#ours[@]}" ours < <(comm -13 <(echo "$before") <(installed))
}
daemon_pid=
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
    apt-get purge -y -qq "${ours[@]}" mailspool >/dev/null 2>&1 || true
    for u in "${users[@]}"; do userdel -r "$u" >/dev/null 2>&1 || true; rm -f "/var/mail/$u"; done
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

command -v cargo-deb >/dev/null || cargo install --locked --quiet cargo-deb
# The test packages the debug build `cargo nextest` just made (a release build would
# double CI's time); a release package: cargo build --release --workspace && cargo deb
# -p mailspool --no-build.
cargo build -q --workspace
deb=$(cargo deb -p mailspool --profile dev --no-build -q 2>/dev/null | tail -1)
[ -f "$deb" ] || deb=$(ls "$PWD"/target/debian/mailspool_*.deb | tail -1)
case "$deb" in /*) ;; *) deb="$PWD/$deb" ;; esac
apt-get install -y -qq "$deb" >/dev/null

# Installed as promised.
[ "$(stat -c '%U %G %a' /var/spool/mailspool)" = "mailspool mailspool-drop 710" ] || fail "spool owner/mode: $(stat -c '%U %G %a' /var/spool/mailspool)"
[ "$(stat -c '%U %G %a' /var/spool/mailspool/maildrop)" = "mailspool mailspool-drop 1730" ] || fail "maildrop: $(stat -c '%U %G %a' /var/spool/mailspool/maildrop)"
# A database spool's drop directory, and the daemon's state, exist and are writable
# under the units' sandbox.
[ "$(stat -c '%U %G %a' /var/lib/mailspool/maildrop)" = "mailspool mailspool-drop 1730" ] || fail "database maildrop: $(stat -c '%U %G %a' /var/lib/mailspool/maildrop 2>&1)"
for unit in mailspool mailspool-serve; do
    systemctl cat "$unit" 2>/dev/null | grep -q '^ReadWritePaths=.*/var/lib/mailspool' ||
        grep -q '^ReadWritePaths=.*/var/lib/mailspool' "/lib/systemd/system/$unit.service" ||
        fail "$unit.service cannot write /var/lib/mailspool"
done
[ "$(stat -c '%U %G %a' /usr/sbin/mailspool-drop)" = "root mailspool-drop 2755" ] || fail "drop: $(stat -c '%U %G %a' /usr/sbin/mailspool-drop)"
[ "$(readlink -f /usr/sbin/sendmail)" = /usr/sbin/mailspool-drop ] || fail "sendmail link"
[ -f /usr/share/doc/mailspool/operations.md ] || fail "docs/operations.md not installed"
[ -f /usr/share/doc/mailspool/examples/mailspool.rules.yml ] || fail "alert rules not installed"
id -nG mailspool | grep -qw mailspool-drop || fail "mailspool is not in mailspool-drop"

# root's mail goes to ms-bob, as a sysadmin's /etc/aliases would say (a file of the
# test's own, under /etc/mailspool: purged with the package).
printf 'postmaster: root\nroot: ms-bob\n' > /etc/mailspool/aliases
cat > /etc/mailspool/mailspool.toml <<EOF
dequeue_dir = "/var/spool/mailspool"
hostname = "server.test"
tls = "none"
dequeue_timeout = 1
aliases = "/etc/mailspool/aliases"
[routes]
"example.test" = "127.0.0.1:${SINK_PORT}"
[http]
listen = "127.0.0.1:${HTTP_PORT}"
EOF

# DKIM as a sysadmin sets it up: root makes the key (the daemon's, nobody else's) and
# adds the lines keygen prints.
dkim_line=$(/usr/bin/mailspool dkim keygen --domain server.test --selector pkg --algorithm ed25519 2>/tmp/mailspool-keygen.err) ||
    fail "dkim keygen: $(cat /tmp/mailspool-keygen.err)"
case "$dkim_line" in 'pkg._domainkey.server.test. IN TXT "v=DKIM1; k=ed25519; p='*) ;; *) fail "keygen printed: $dkim_line" ;; esac
# Files made for the daemon are the daemon's, group included: never mailspool-drop, the
# group every user's sendmail runs with.
[ "$(stat -c '%U %G %a' /etc/mailspool/dkim/pkg._domainkey.server.test.pem)" = "mailspool mailspool 600" ] || fail "DKIM key: $(stat -c '%U %G %a' /etc/mailspool/dkim/pkg._domainkey.server.test.pem)"
[ "$(stat -c '%U %G %a' /etc/mailspool/dkim)" = "mailspool mailspool 700" ] || fail "DKIM key dir: $(stat -c '%U %G %a' /etc/mailspool/dkim)"
grep -A3 '^\[\[dkim\]\]' /tmp/mailspool-keygen.err >> /etc/mailspool/mailspool.toml
[ -f /usr/share/doc/mailspool/deliverability.md ] || fail "docs/deliverability.md not installed"

# The HTTP API as a sysadmin sets it up: root makes a token; the file is the daemon's
# (it runs as mailspool) and nobody else's.
token=$(/usr/bin/mailspool token add package-test --scope admin 2>/dev/null | tail -1)
case "$token" in mst_*) ;; *) fail "token add printed no token" ;; esac
[ "$(stat -c '%U %G %a' /etc/mailspool/tokens)" = "mailspool mailspool 600" ] || fail "tokens file: $(stat -c '%U %G %a' /etc/mailspool/tokens)"
# SMTP AUTH users as a sysadmin adds them: root writes /etc/mailspool/users for the
# listener's user, which runs as mailspool and reads it.
printf 'pw-for-submitter\n' | /usr/bin/mailspool user add submitter >/dev/null || fail "mailspool user add as root"
[ "$(stat -c '%U %G %a' /etc/mailspool/users)" = "mailspool mailspool 600" ] || fail "users file: $(stat -c '%U %G %a' /etc/mailspool/users)"
# http METHOD PATH BODY: one request over bash's /dev/tcp (no curl needed); prints the reply.
http() {
    exec 3<>"/dev/tcp/127.0.0.1/${HTTP_PORT}" || return 1
    printf '%s %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
        "$1" "$2" "$token" "${#3}" "$3" >&3
    cat <&3
    exec 3<&-
}

for u in "${users[@]}"; do
    useradd --create-home --shell /bin/sh "$u"
    echo "uid $u $(id -u "$u")"
done

send_batch() { # first last
    for u in "${users[@]}"; do
        for i in $(seq "$1" "$2"); do
            printf 'To: %s-%s@example.test\nSubject: %s %s\n\nhello from %s\n' "$u" "$i" "$u" "$i" "$u" |
                runuser -u "$u" -- env -i PATH=/usr/bin:/bin /usr/sbin/sendmail -t -i ||
                fail "sendmail as $u, message $i"
        done
    done
}

# The daemon is down: mail waits in the drop, durably.
send_batch 1 25
[ "$(find /var/spool/mailspool/maildrop -type f | wc -l)" = 50 ] || fail "50 dropped files expected"

runuser -u mailspool -- /usr/bin/mailspool daemon 2>/tmp/mailspool-package-daemon.log &
daemon_pid=$!
send_batch 26 50
# (Replies are read whole before they are matched: `grep -q` closing the pipe early
# would fail the request under pipefail.)
for _ in $(seq 1 50); do reply=$(http GET /healthz "" 2>/dev/null || true); case "$reply" in *ok*) break ;; esac; sleep 0.2; done
reply=$(http GET /v1/summary "")
case "$reply" in "HTTP/1.1 200"*) ;; *) fail "the daemon does not serve the API with root's token: $reply" ;; esac
reply=$(http POST /v1/messages '{"from": "app@server.test", "to": ["http@example.test"], "subject": "over http", "text": "hi"}')
case "$reply" in "HTTP/1.1 202"*) ;; *) fail "POST /v1/messages: $reply" ;; esac

# The mail a server makes: cron's exact call (the crontab's user as a bare name),
# `sendmail root`, and mail(1) from Debian's bsd-mailx, which needs an MTA and takes
# this package as one.
printf 'From: root (Cron Daemon)\nTo: ms-alice\nSubject: Cron <ms-alice@server> /usr/local/bin/report\n\nreport output\n' |
    runuser -u ms-alice -- env -i PATH=/usr/bin:/bin /usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem ms-alice ||
    fail "cron's sendmail call"
printf 'Subject: smartd\n\ndisk 1 is failing\n' | runuser -u ms-alice -- /usr/sbin/sendmail root || fail "sendmail root"
command -v bsd-mailx >/dev/null || apt_add bsd-mailx
echo "sent with mail(1)" | runuser -u ms-alice -- mail -s "from mailx" root || fail "mail -s subject root"
# Symfony Mailer's default transport: `sendmail -bs`, SMTP on a pipe, as a user who does
# not own the spool (each message goes through the drop).
bs=$(printf 'EHLO app.test\r\nMAIL FROM:<ms-alice>\r\nRCPT TO:<ms-bob>\r\nDATA\r\nSubject: over sendmail -bs\r\n\r\nhello\r\n.\r\nQUIT\r\n' |
    runuser -u ms-alice -- /usr/sbin/sendmail -bs) || fail "sendmail -bs exited $?: $bs"
case "$bs" in *"250 2.0.0"*"221"*) ;; *) fail "sendmail -bs: $bs" ;; esac
# A spool the user names but may not write: said on stderr, not silently ignored.
named=$(printf 'To: ms-bob\nSubject: named spool\n\nx\n' |
    runuser -u ms-alice -- /usr/bin/mailspool --spool /var/spool/mailspool send -t 2>&1) ||
    fail "mailspool --spool send as a user: $named"
case "$named" in *"ignores --spool"*) ;; *) fail "a named spool is silently ignored: $named" ;; esac
# PHP's mail() (it runs `sendmail -t -i`).
command -v php >/dev/null || apt_add php-cli
runuser -u ms-alice -- php -r 'exit(mail("ms-bob", "from php", "sent by mail()") ? 0 : 1);' || fail "PHP mail()"

# What a user might try. Each must fail.
attack() { # description, command...
    local what=$1; shift
    if runuser -u ms-alice -- "$@" >/tmp/mailspool-attack.out 2>&1; then
        fail "attack succeeded: $what"
    fi
    echo "refused: $what: $(tail -1 /tmp/mailspool-attack.out)"
}
attack "list the drop" ls /var/spool/mailspool/maildrop
attack "list tier 0" ls /var/spool/mailspool/0
attack "read a queued message" sh -c 'cat /var/spool/mailspool/*/*'
attack "plant a symlink to /etc/shadow" ln -s /etc/shadow /var/spool/mailspool/0/1700000000-X-x@example.test-a@b.test
attack "plant a FIFO in tmp/" mkfifo /var/spool/mailspool/tmp/fifo
attack "plant a lock" touch /var/spool/mailspool/0/1700000000-X-x@example.test-a@b.test.NFSLock
attack "rename someone's queued mail" sh -c 'mv /var/spool/mailspool/1/* /tmp/'
attack "delete someone's dropped mail" sh -c 'rm -f /var/spool/mailspool/maildrop/*; ls /var/spool/mailspool/maildrop'
attack "list the queue" /usr/bin/mailspool queue
attack "list the queue (mailq)" /usr/bin/mailq
attack "delete from the queue" /usr/bin/mailspool --spool /var/spool/mailspool queue delete X
attack "read the API tokens" cat /etc/mailspool/tokens
attack "read the DKIM key" cat /etc/mailspool/dkim/pkg._domainkey.server.test.pem
attack "write the spool directly" sh -c 'echo hi | /usr/bin/mailspool --spool /var/spool/mailspool send --now a@example.test'
# Redirecting the privileged drop elsewhere: ignored while it runs setgid.
printf 'To: redirect@example.test\nSubject: env\n\nx\n' |
    runuser -u ms-alice -- env MAILSPOOL_SPOOL=/tmp/evil MAILSPOOL_CONFIG=/tmp/evil.toml /usr/sbin/sendmail -t -i
[ ! -e /tmp/evil ] || fail "the drop followed MAILSPOOL_SPOOL"

# Everything delivered: the drop and the tiers empty (of messages: lock files, and the
# lock temp files `.lk.*` a running daemon keeps for reuse, are not mail).
for _ in $(seq 1 120); do
    left=$(find /var/spool/mailspool/maildrop /var/spool/mailspool/[0-6] -type f ! -name '.lk.*' 2>/dev/null | grep -vc NFSLock || true)
    [ "$left" = 0 ] && break
    sleep 1
done
[ "$left" = 0 ] || { tail -20 /tmp/mailspool-package-daemon.log; fail "$left files still queued"; }
grep -c "picked up" /tmp/mailspool-package-daemon.log | sed 's/^/picked up: /'
# Each in the right mailbox, as Debian has mailboxes (USER:mail 0660), readable by mail -f.
for box in ms-alice ms-bob; do
    [ "$(stat -c '%U %G %a' /var/mail/$box 2>/dev/null)" = "$box mail 660" ] ||
        { tail -20 /tmp/mailspool-package-daemon.log; fail "/var/mail/$box: $(stat -c '%U %G %a' /var/mail/$box 2>&1)"; }
done
alice_box=$(printf 'p 1\nq\n' | runuser -u ms-alice -- mail -f /var/mail/ms-alice 2>&1)
case "$alice_box" in *"Subject: Cron <ms-alice@server>"*"report output"*) ;; *) fail "mail -f ms-alice: $alice_box" ;; esac
bob_box=$(printf 'h\nq\n' | runuser -u ms-bob -- mail -f /var/mail/ms-bob 2>&1)
for subject in smartd "from mailx" "over sendmail -bs" "from php"; do
    case "$bob_box" in *"$subject"*) ;; *) fail "'$subject' is not in ms-bob's mailbox: $bob_box" ;; esac
done
echo "local mail: cron to ms-alice; root (sendmail, mail -s), sendmail -bs and PHP mail() to ms-bob"
/usr/bin/mailspool doctor || true
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=

apt-get purge -y -qq "${ours[@]}" mailspool >/dev/null
ours=()
! getent passwd mailspool >/dev/null || fail "the mailspool user survived the purge"
! getent group mailspool-drop >/dev/null || fail "the mailspool-drop group survived the purge"
[ ! -e /var/spool/mailspool ] || fail "the spool survived the purge"
[ ! -e /var/lib/mailspool ] || fail "/var/lib/mailspool survived the purge"
[ ! -e /usr/sbin/sendmail ] || fail "/usr/sbin/sendmail survived the purge"
echo PASS
