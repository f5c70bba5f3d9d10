# The peers bench/peers measures: every MTA Debian ships that fits, each installed with
# apt (one at a time: they all provide mail-transport-agent, so apt removes the one
# before, Postfix included), configured for loopback only and relaying everything to the
# sink, with defaults otherwise. Source it; PEERS lists them.

PEERS="exim opensmtpd nullmailer dma"
# KumoMTA (built from its source outside this project: docs/benchmarks.md "KumoMTA"
# says how) joins when its binary is present: $KUMOD, or kumod on the PATH.
KUMOD="${KUMOD:-$(command -v kumod || true)}"
[ -n "$KUMOD" ] && [ -x "$KUMOD" ] && PEERS="$PEERS kumomta"
# Its spools go where the file system under test is ($KUMO_DIR), flushed on every
# write (define_spool's flush = true: its strongest durability, the counterpart of
# mailspool's fsyncs; its default, false, does not flush at all).
KUMO_DIR="${KUMO_DIR:-/var/tmp/kumomta-bench}"
# KUMO_FLUSH=false measures it at its default instead: acknowledged before the spool
# reaches the disk, so not comparable on durability (say so next to the figure).
KUMO_FLUSH="${KUMO_FLUSH:-true}"

peer_package() {
    case "$1" in
        exim) echo exim4-daemon-light ;;
        opensmtpd) echo opensmtpd ;;
        nullmailer) echo nullmailer ;;
        dma) echo dma ;;
        kumomta) echo "" ;;
        *) echo "unknown peer $1 (one of: $PEERS)" >&2; exit 2 ;;
    esac
}

# Peers with an SMTP listener; nullmailer and dma are command-line intake only.
peer_has_smtp() { [ "$1" = exim ] || [ "$1" = opensmtpd ] || [ "$1" = kumomta ]; }

# The processes that make up the peer, for PSS.
peer_pids() {
    case "$1" in
        exim) pgrep -x exim4 ;;
        opensmtpd) pgrep -x smtpd ;;
        nullmailer) pgrep -f '^/usr/sbin/nullmailer' ;;
        dma) pgrep -x dma ;;
        kumomta) pgrep -x kumod ;;
    esac | tr '\n' ' '
}

stop_all_mtas() {
    postfix stop >/dev/null 2>&1 || true
    pkill -x exim4 2>/dev/null || true
    pkill -x smtpd 2>/dev/null || true
    pkill -f '^/usr/sbin/nullmailer-send' 2>/dev/null || true
    pkill -x kumod 2>/dev/null || true
    sleep 0.5
}

peer_install() {
    stop_all_mtas
    local pkg; pkg=$(peer_package "$1")
    [ -z "$pkg" ] && return 0
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
        kumomta)
            rm -rf "$KUMO_DIR"; mkdir -p "$KUMO_DIR"
            cat > "$KUMO_DIR/init.lua" <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '127.0.0.1:25', relay_hosts = { '127.0.0.1' } }
  kumo.configure_local_logs { log_dir = '$KUMO_DIR/logs' }
  kumo.define_spool { name = 'data', path = '$KUMO_DIR/data', flush = $KUMO_FLUSH }
  kumo.define_spool { name = 'meta', path = '$KUMO_DIR/meta', flush = $KUMO_FLUSH }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  -- An IP address in brackets (otherwise a name to resolve), the sink's port after it.
  return kumo.make_queue_config { protocol = { smtp = { mx_list = { '[127.0.0.1]:$2' } } } }
end)
kumo.on('get_egress_path_config', function(domain, source_name, site_name)
  -- Postfix's and mailspool's 20 connections per destination.
  return kumo.make_egress_path { enable_tls = 'Disabled', connection_limit = 20, prohibited_hosts = {} }
end)
LUA
            "$KUMOD" --policy "$KUMO_DIR/init.lua" --user root >"$KUMO_DIR/kumod.log" 2>&1 &
            sleep 2 ;;
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
    for p in $PEERS; do [ -n "$(peer_package "$p")" ] && pkgs+=("$(peer_package "$p")"); done
    rm -rf "$KUMO_DIR"
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${pkgs[@]}" exim4-base exim4-config opensmtpd-extras >/dev/null 2>&1 || true
}
