# Shared by bench/drop and bench/peers: mailspool installed the way the Debian package
# lays it out (spool user, setgid drop group, /var/spool/mailspool, a setgid
# mailspool-drop as "$work/sendmail"), and an unprivileged user to send as.
# Source it; call system_check before setting the EXIT trap (it refuses a machine where
# mailspool is installed, whose spool the teardown would remove), then system_setup after
# setting work, and system_teardown on exit.

system_check() {
    if [ -e /etc/mailspool/mailspool.toml ] || [ -e /var/spool/mailspool ]; then
        echo "this benchmark needs a machine without a mailspool installation" >&2; exit 1
    fi
}

system_setup() {
    chmod 755 "$work"
    system_teardown # users a killed run left behind
    groupadd --system mailspool-drop
    useradd --system --no-create-home --shell /usr/sbin/nologin --groups mailspool-drop msbench-spool
    useradd --no-create-home --shell /bin/sh msbench-user
    install -d -o msbench-spool -g mailspool-drop -m 0710 /var/spool/mailspool
    install -d -o msbench-spool -g mailspool-drop -m 1730 /var/spool/mailspool/maildrop
    install -d -m 0755 /etc/mailspool
    echo 'dequeue_dir = "/var/spool/mailspool"' > /etc/mailspool/mailspool.toml
    install -o root -g mailspool-drop -m 2755 target/release/mailspool-drop "$work/sendmail"
    install -m 0755 target/release/mailspool "$work/mailspool"
    install -m 0755 target/release/mailspool-bench "$work/mailspool-bench"
}

system_teardown() {
    pkill -u msbench-spool 2>/dev/null && sleep 0.5
    rm -rf /var/spool/mailspool /etc/mailspool
    userdel msbench-user 2>/dev/null || true
    userdel msbench-spool 2>/dev/null || true
    groupdel mailspool-drop 2>/dev/null || true
}

# as_user PROGRAM ARGS...: one process per 4 KB message for $seconds, as the unprivileged
# user; prints messages per second.
as_user() { runuser -u msbench-user -- "$work/mailspool-bench" command --seconds "$seconds" -- "$@"; }
