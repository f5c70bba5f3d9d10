# The peers bench/peers measures: every MTA Debian ships that fits, each installed with
# apt (one at a time: they all provide mail-transport-agent, so apt removes the one
# before, Postfix included), configured for loopback only and relaying everything to the
# sink, with defaults otherwise. Source it; PEERS lists them.

PEERS="exim opensmtpd nullmailer dma"

peer_package() {
    case "$1" in
        exim) echo exim4-daemon-light ;;
        opensmtpd) echo opensmtpd ;;
        nullmailer) echo nullmailer ;;
        dma) echo dma ;;
        *) echo "unknown peer $1 (one of: $PEERS)" >&2; exit 2 ;;
    esac
}

# Peers with an SMTP listener; nullmailer and dma are command-line intake only.
peer_has_smtp() { [ "$1" = exim ] || [ "$1" = opensmtpd ]; }

# The processes that make up the peer, for PSS.
peer_pids() {
    case "$1" in
        exim) pgrep -x exim4 ;;
        opensmtpd) pgrep -x smtpd ;;
        nullmailer) pgrep -f '^/usr/sbin/nullmailer' ;;
        dma) pgrep -x dma ;;
    esac | tr '\n' ' '
}

stop_all_mtas() {
    postfix stop >/dev/null 2>&1 || true
    pkill -x exim4 2>/dev/null || true
    pkill -x smtpd 2>/dev/null || true
    pkill -f '^/usr/sbin/nullmailer-send' 2>/dev/null || true
    sleep 0.5
}

peer_install() {
    stop_all_mtas
    local pkg; pkg=$(peer_package "$1")
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    fi
    stop_all_mtas # a postinst may have started it with the packaged configuration
}

# peer_start PEER SINK_PORT: configure (SMTP on 127.0.0.1:25 where it has a listener) and
# start it.
peer_start() {
    case "$1" in
        exim)
            # A whole configuration: Debian's split templates refuse a smarthost on the
            # local host; this says only what the benchmark needs.
            cat > /etc/exim4/exim4.conf <<CONF
primary_hostname = bench.test
local_interfaces = 127.0.0.1
daemon_smtp_ports = 25
hostlist relay_from_hosts = 127.0.0.1
acl_smtp_rcpt = acl_check_rcpt
begin acl
acl_check_rcpt:
  accept hosts = +relay_from_hosts
  deny
begin routers
sink:
  driver = manualroute
  route_list = * 127.0.0.1
  transport = to_sink
  self = send
  no_more
begin transports
to_sink:
  driver = smtp
  port = $2
  allow_localhost
begin retry
* * F,1h,1m
CONF
            install -d -o Debian-exim -g Debian-exim /run/exim4
            /usr/sbin/exim4 -bd -q30m ;;
        opensmtpd)
            cat > /etc/smtpd.conf <<CONF
listen on 127.0.0.1
action "sink" relay host smtp://127.0.0.1:$2
match from local for any action "sink"
CONF
            /usr/sbin/smtpd ;;
        nullmailer)
            echo "127.0.0.1 smtp --port=$2" > /etc/nullmailer/remotes
            runuser -u mail -- /usr/sbin/nullmailer-send >/dev/null 2>&1 & ;;
        dma)
            printf 'SMARTHOST 127.0.0.1\nPORT %s\nMAILNAME bench.test\n' "$2" > /etc/dma/dma.conf ;;
    esac
    sleep 1
}

peer_stop() {
    stop_all_mtas
    pkill -x dma 2>/dev/null || true
}

# Remove the peers' packages and what peer_start wrote.
peers_purge() {
    stop_all_mtas
    rm -f /etc/exim4/exim4.conf
    local p pkgs=()
    for p in $PEERS; do pkgs+=("$(peer_package "$p")"); done
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${pkgs[@]}" exim4-base exim4-config opensmtpd-extras >/dev/null 2>&1 || true
}
