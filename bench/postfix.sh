# Shared by the benchmark scripts: install and configure Postfix as the peer, loopback
# only, relaying to 127.0.0.1:$1 (a sink) with all mail deferred until flushed.
# Source it; then call postfix_setup SINK_PORT and, on exit, postfix_teardown.

postfix_setup() {
    local sink_port="$1"
    if ! command -v postconf >/dev/null 2>&1; then
        apt-get update -qq
        echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
    fi
    postconf -e inet_interfaces=loopback-only \
        default_transport=smtp relay_transport=relay \
        smtp_dns_support_level=disabled relayhost="[127.0.0.1]:${sink_port}" \
        defer_transports=smtp maillog_file=/var/log/postfix.log \
        smtp_tls_security_level=none
    postfix stop >/dev/null 2>&1 || true
    postsuper -d ALL >/dev/null 2>&1 || true
    : > /var/log/postfix.log
    postfix start >/dev/null 2>&1
}

postfix_teardown() {
    postsuper -d ALL >/dev/null 2>&1 || true
    postconf -e defer_transports=smtp
    postfix stop >/dev/null 2>&1 || true
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

machine_line() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), disk $(df -h "${1:-/}" | awk 'NR==2 {print $1}')"
    # The file system shapes the figures (an ext4 without a journal pays for every
    # inode allocated after many were freed, and needs the directory fsyncs).
    local dev; dev=$(df "${1:-/}" | awk 'NR==2 {print $1}')
    local jbd="no journal"; ls /proc/fs/jbd2 2>/dev/null | grep -q "^$(basename "$dev")-" && jbd="journal"
    [ "$(findmnt -no FSTYPE --target "${1:-/}" 2>/dev/null | head -1)" = xfs ] && jbd="XFS log"
    echo "file system: $(findmnt -no FSTYPE,OPTIONS --target "${1:-/}" 2>/dev/null | head -1) ($jbd)"
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
}
