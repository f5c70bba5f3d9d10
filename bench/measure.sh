# Shared by bench/load and bench/peers: end-to-end runs against a counting sink, and the
# proportional memory (PSS) of a side's processes. Source it after setting:
#   B            the mailspool-bench binary
#   work         a scratch directory
#   counts_file  the sink's counts file, relative to $work
#   side_pids    a function: side_pids SIDE prints that side's process ids

now_ms() { date +%s%3N; }
counts() { cat "$work/$counts_file"; }
rate() { awk -v n="$1" -v ms="$2" 'BEGIN { printf "%.0f", n * 1000 / ms }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mean() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (a + b) / 2 }'; }

pss_kb() { # PIDS... -> summed Pss in kB
    local total=0 p v
    for p in "$@"; do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# sample_pss SIDE: the peak of the side's PSS into $work/peak.SIDE until $work/stop exists
sample_pss() {
    local peak=0 v
    while [ ! -e "$work/stop" ]; do
        # shellcheck disable=SC2046
        v=$(pss_kb $(side_pids "$1"))
        [ "$v" -gt "$peak" ] && peak=$v
        sleep 0.1
    done
    echo "$peak" > "$work/peak.$1"
}

# e2e SIDE PORT SESSIONS MESSAGES RCPTS CLIENT: sends MESSAGES with CLIENT (smtp-source,
# load or load-tls: mailspool-bench load) and waits until the sink has every recipient.
# Prints "ms transactions connections full-handshakes resumed-handshakes retries" as the
# sink saw them (retries: connections the client had to try again, 421 or no greeting).
e2e() {
    local tx0 r0 c0 f0 s0 tx r c f s retries=0
    read -r tx0 r0 c0 f0 s0 _ < <(counts)
    local want=$(( $4 * $5 )) t0 t1
    rm -f "$work/stop"
    sample_pss "$1" & local sampler=$!
    t0=$(now_ms)
    case "$6" in
        smtp-source)
            smtp-source -s "$3" -m "$4" -r "$5" -l 4096 -f bench@example.com -t rcpt@example.test "127.0.0.1:$2" ;;
        load|load-tls)
            local tls=""; [ "$6" = load-tls ] && tls=--tls
            read -r _ _ retries < <(RUST_BACKTRACE=0 "$B" load --port "$2" --sessions "$3" --messages "$4" --rcpts "$5" $tls) ;;
    esac
    for _ in $(seq 1 12000); do
        read -r tx r c f s _ < <(counts)
        [ $(( r - r0 )) -ge "$want" ] && break
        sleep 0.05
    done
    t1=$(now_ms)
    touch "$work/stop"; wait "$sampler"
    echo "$((t1 - t0)) $((tx - tx0)) $((c - c0)) $((f - f0)) $((s - s0)) $retries"
}
