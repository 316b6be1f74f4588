#!/usr/bin/env bash
# Access-tier benchmark: Posthorn embedded (`posthorn serve`) next to Dovecot
# (Debian's dovecot-imapd/dovecot-pop3d) on the same machine in the same run.
# See bench/README.md ("IMAP/POP3 access benchmark") for what is measured.
#
#   bench/imap.sh                        # everything, 3 repetitions
#   SYSTEMS=dovecot REPS=1 bench/imap.sh
#
# Environment knobs (defaults in brackets):
#   SYSTEMS          systems to run, in order ["embedded dovecot"]
#   REPS             repetitions of each throughput measurement; median [3]
#   IDLE_REPS        repetitions of each idle-connection measurement [1]
#   IDLE_N           idle IMAP connections [10000]
#   IDLE_N_DOVECOT_DEFAULT  idle connections for Dovecot's default
#                    one-process-per-connection setup (process_limit 1024) [1000]
#   IDLE_LOGIN_CONCURRENCY  logins in flight while opening them [20]
#   IDLE_WARMUP      sessions opened and closed before the "before" sample [300]
#   IDLE_HOLD        seconds the server's CPU is measured with all idling [20]
#   IDLE_CAP_MIB     stop opening idle connections once the server's anonymous RSS
#                    grew by more than this many MiB (protects the machine) [3072]
#   MMAP_VARIANT     also measure Posthorn's idle connections with
#                    MALLOC_MMAP_THRESHOLD_=1048576 (diagnostic) [1]
#   POP_ACCOUNTS     POP3 accounts = POP3 clients [50]; POP_MSGS per account [200]
#   POP_ROUNDS       POP3 sessions per client per measurement [2]
#   BIG_MSGS         messages in the FETCH-all mailbox [10000]
#   MIX_CLIENTS      clients (one account each) of the mixed load [50]
#   MIX_SECS         seconds per mixed-load measurement [10]
#   POSTHORN_BIN     binary [target/release/posthorn; built if missing]
#   IDLE_WAIT        wait up to this many seconds for other load to stop [300]
#   KEEP=1           keep the work directory (logs, data) after the run
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
POSTHORN=${POSTHORN_BIN:-$ROOT/target/release/posthorn}
SYSTEMS=${SYSTEMS:-"embedded dovecot"}
REPS=${REPS:-3}
IDLE_REPS=${IDLE_REPS:-1}
IDLE_N=${IDLE_N:-10000}
IDLE_N_DOVECOT_DEFAULT=${IDLE_N_DOVECOT_DEFAULT:-1000}
IDLE_LOGIN_CONCURRENCY=${IDLE_LOGIN_CONCURRENCY:-20}
IDLE_WARMUP=${IDLE_WARMUP:-300}
IDLE_HOLD=${IDLE_HOLD:-20}
IDLE_CAP_MIB=${IDLE_CAP_MIB:-3072}
MMAP_VARIANT=${MMAP_VARIANT:-1}
POP_ACCOUNTS=${POP_ACCOUNTS:-50}
POP_MSGS=${POP_MSGS:-200}
POP_ROUNDS=${POP_ROUNDS:-2}
BIG_MSGS=${BIG_MSGS:-10000}
MIX_CLIENTS=${MIX_CLIENTS:-50}
MIX_SECS=${MIX_SECS:-10}
MIX_MSGS=30 # imaptest's default message_count_threshold
PASSWORD=bench-pw
DOMAIN=example.test
VMAIL_UID=5000 # owner of Dovecot's Maildirs (no passwd entry needed)
CLK_TCK=$(getconf CLK_TCK)
LIB="$HERE/lib/benchlib.py"
LOAD="$HERE/lib/imapload.py"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
py() { python3 "$LIB" "$@"; }
load() { python3 "$LOAD" "$@"; }

# Account lists ("user:password"), the same on both systems.
accounts() { # PREFIX COUNT
	local i
	for ((i = 0; i < $2; i++)); do printf '%s%02d@%s:%s\n' "$1" "$i" "$DOMAIN" "$PASSWORD"; done
}
mapfile -t POP_ACCTS < <(accounts pop "$POP_ACCOUNTS")
mapfile -t MIX_ACCTS < <(accounts mix "$MIX_CLIENTS")
BIG_ACCT="big@$DOMAIN:$PASSWORD"

# ---------------------------------------------------------------- install

install_prereqs() {
	local apt_pkgs=()
	if [[ " $SYSTEMS " == *" dovecot "* ]]; then
		[[ -x /usr/sbin/dovecot && -x /usr/lib/dovecot/imap ]] || apt_pkgs+=(dovecot-imapd)
		[[ -x /usr/lib/dovecot/pop3 ]] || apt_pkgs+=(dovecot-pop3d)
	fi
	command -v curl >/dev/null || apt_pkgs+=(curl)
	if ((${#apt_pkgs[@]})); then
		log "installing ${apt_pkgs[*]} (apt)"
		apt-get update -qq
		# The packages' own dovecot.service is not used (and on a machine with
		# systemd keeps running on 143/110; ours uses its own ports and base_dir).
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
	fi
	if [[ " $SYSTEMS " == *" embedded "* && ! -x $POSTHORN ]]; then
		log "building $POSTHORN (cargo build --release -p posthorn)"
		(cd "$ROOT" && cargo build --release -p posthorn)
	fi
}

# ---------------------------------------------------------------- processes

STARTED_PIDS=()
SERVER_PIDS=()

spawn() { # spawn LOG CMD... ; sets SPAWNED_PID
	local logf=$1
	shift
	"$@" </dev/null >>"$logf" 2>&1 &
	SPAWNED_PID=$!
	STARTED_PIDS+=("$SPAWNED_PID")
}

stop_pids() { # SIGTERM, then SIGKILL after 20 s, only the given pids
	local p
	for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
	local deadline=$((SECONDS + 20))
	for p in "$@"; do
		while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
}

wait_port() { # wait_port PORT PID WHAT
	local deadline=$((SECONDS + 30))
	until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
		kill -0 "$2" 2>/dev/null || die "$3 exited at start"
		((SECONDS < deadline)) || die "$3 not listening on $1 within 30 s"
		sleep 0.05
	done
}

cleanup() {
	local rc=$?
	set +e
	if ((${#STARTED_PIDS[@]})); then stop_pids "${STARTED_PIDS[@]}"; fi
	if [[ -n ${WORK:-} && -d $WORK ]]; then
		if [[ ${KEEP:-0} == 1 || $rc != 0 ]]; then
			log "work directory kept: $WORK"
		else
			rm -rf "$WORK"
		fi
	fi
	exit "$rc"
}

# Wait (up to IDLE_WAIT s) until the rest of the machine is quiet.
wait_idle() {
	local deadline=$((SECONDS + ${IDLE_WAIT:-300})) a b pct
	while :; do
		a=$(py busy)
		sleep 2
		b=$(py busy)
		pct=$(((b - a) * 100 / (2 * CLK_TCK * $(nproc))))
		((pct <= 15)) && return 0
		if ((SECONDS >= deadline)); then
			log "machine still ${pct}% busy with other work; measuring anyway"
			return 0
		fi
		log "machine ${pct}% busy with other work; waiting"
		sleep 8
	done
}

# ---------------------------------------------------------------- posthorn

write_posthorn_config() { # FILE
	cat >"$1" <<EOF
[server]
hostname = "bench.localdomain"

[smtp]
listen = "127.0.0.1:$P_SMTP"
submission_listen = ""
submissions_listen = ""
http_listen = "127.0.0.1:$P_H_SMTP"
router_url = "http://127.0.0.1:$P_ROUTER"

[access]
imap_listen = "127.0.0.1:$P_IMAP"
imaps_listen = ""
pop3_listen = "127.0.0.1:$P_POP3"
pop3s_listen = ""
http_listen = "127.0.0.1:$P_H_ACCESS"
# The load generator logs in without TLS, as it does with Dovecot.
allow_plaintext_auth = true

[router]
grpc_listen = "127.0.0.1:$P_ROUTER"
http_listen = "127.0.0.1:$P_H_ROUTER"

[resolver]
grpc_listen = "127.0.0.1:$P_RESOLVER"
http_listen = "127.0.0.1:$P_H_RESOLVER"

[delivery]
http_listen = "127.0.0.1:$P_H_DELIVERY"
resolver_url = "http://127.0.0.1:$P_RESOLVER"
EOF
}

wait_ready() { # LOGFILE PID PORT...
	local logf=$1 pid=$2
	shift 2
	local deadline=$((SECONDS + 60)) p ok
	while :; do
		ok=1
		for p in "$@"; do
			[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/readyz" || true) == 200 ]] || ok=0
		done
		((ok)) && return 0
		kill -0 "$pid" 2>/dev/null || { tail -30 "$logf" >&2; die "posthorn exited while starting"; }
		((SECONDS < deadline)) || { tail -30 "$logf" >&2; die "posthorn not ready within 60 s"; }
		sleep 0.1
	done
}

start_posthorn() { # DIR [ENV=VALUE...]: a `posthorn serve` on DIR/data (kept across restarts)
	local d=$1
	shift
	spawn "$d/serve.log" env "$@" "$POSTHORN" serve --config "$d/posthorn.toml" --data-dir "$d/data"
	SERVER_PIDS=("$SPAWNED_PID") # `env` execs posthorn: same pid
	wait_ready "$d/serve.log" "$SPAWNED_PID" "$P_H_SMTP" "$P_H_ACCESS" "$P_H_ROUTER" "$P_H_RESOLVER" "$P_H_DELIVERY"
	IMAP_PORT=$P_IMAP
	POP3_PORT=$P_POP3
}

setup_embedded() { # DIR
	local d=$1
	read -r P_SMTP P_IMAP P_POP3 P_ROUTER P_RESOLVER P_H_SMTP P_H_ACCESS P_H_ROUTER P_H_RESOLVER \
		P_H_DELIVERY <<<"$(py freeport 10)"
	write_posthorn_config "$d/posthorn.toml"
	start_posthorn "$d"
	local server="http://127.0.0.1:$P_ROUTER"
	"$POSTHORN" domain add "$DOMAIN" --server "$server" >/dev/null
	# Accounts (argon2id hashes: about 0.1 s each, so 4 at a time).
	{
		printf '%s\n' "${POP_ACCTS[@]%%:*}" "${MIX_ACCTS[@]%%:*}" "${BIG_ACCT%%:*}"
	} | xargs -P 4 -I{} "$POSTHORN" user add {} --password "$PASSWORD" --server "$server" >/dev/null
}

# ---------------------------------------------------------------- dovecot

# Dovecot 2.3 with its built-in defaults (which Debian's conf.d files only
# restate), plus what a private instance needs: own ports, base_dir and log,
# plaintext auth without TLS, a passwd-file with plaintext passwords, Maildirs
# under the work directory. TUNED=1 adds the multi-client imap service.
write_dovecot_config() { # FILE TUNED
	local dv=$WORK/dovecot
	cat >"$1" <<EOF
# Written by posthorn bench/imap.sh.
protocols = imap pop3
listen = 127.0.0.1
base_dir = $dv/run
state_dir = $dv/state
instance_name = posthorn-bench
log_path = $dv/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:$dv/mail/%d/%n/Maildir
# The idle test opens 200 connections per account from one address; the
# default limit is 10 per user and IP.
mail_max_userip_connections = 1000
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dv/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $dv/users
  default_fields = uid=$VMAIL_UID gid=$VMAIL_UID home=$dv/mail/%d/%n
}
service imap-login {
  inet_listener imap {
    port = $D_IMAP
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    port = $D_POP3
  }
  inet_listener pop3s {
    port = 0
  }
}
EOF
	if (($2)); then
		cat >>"$1" <<EOF
# Tuned: up to 1000 IMAP sessions per imap process (default: one process
# per session, client_limit = 1, service_count = 1, process_limit = 1024).
service imap {
  client_limit = 1000
  service_count = 0
  process_limit = 20
  vsz_limit = 2G
}
EOF
	fi
}

start_dovecot() { # TUNED
	write_dovecot_config "$WORK/dovecot/dovecot-$1.conf" "$1"
	spawn "$WORK/dovecot/foreground.log" /usr/sbin/dovecot -F -c "$WORK/dovecot/dovecot-$1.conf"
	SERVER_PIDS=("$SPAWNED_PID")
	wait_port "$D_IMAP" "$SPAWNED_PID" dovecot
	wait_port "$D_POP3" "$SPAWNED_PID" dovecot
	IMAP_PORT=$D_IMAP
	POP3_PORT=$D_POP3
}

setup_dovecot() {
	local dv=$WORK/dovecot
	mkdir -p "$dv/run" "$dv/state" "$dv/mail"
	chown "$VMAIL_UID:$VMAIL_UID" "$dv/mail"
	read -r D_IMAP D_POP3 <<<"$(py freeport 2)"
	local a
	for a in "${POP_ACCTS[@]}" "${MIX_ACCTS[@]}" "$BIG_ACCT"; do
		printf '%s:{PLAIN}%s::::::\n' "${a%%:*}" "$PASSWORD"
	done >"$dv/users"
	chmod 644 "$dv/users"
	start_dovecot 0
}

# ---------------------------------------------------------------- measurements

RESULTS=""

measure() { # SYSTEM TEST REP [label=value...] -- loadgen args...
	local sys=$1 test=$2 rep=$3
	shift 3
	local labels=()
	while [[ $1 != -- ]]; do labels+=(--label "$1"); shift; done
	shift
	local out
	out=$(load "$@" --pids "${SERVER_PIDS[@]}" --label "system=$sys" --label "test=$test" \
		--label "rep=$rep" "${labels[@]}") || die "$sys $test: load generator failed"
	printf '%s\n' "$out" >>"$RESULTS"
	python3 - "$out" <<'EOF' >&2
import json, sys
r = json.loads(sys.argv[1])
v = r.get("msgs_per_s", r.get("cmds_per_s"))
if r["test"] == "idle":
    s = (f"{r['idling']} of {r['n']} idling, {r['kib_per_conn_pss']} KiB/conn (PSS), "
         f"{r['kib_per_conn_rss']} KiB/conn (RSS), opened in {r['open_s']} s"
         + (f", CAPPED at {r['capped_at']}" if r.get("capped_at") else ""))
else:
    s = f"{v} {'msgs/s' if 'msgs_per_s' in r else 'cmds/s'}"
print(f"[{r['system']} {r['test']} {r.get('variant', '')} rep {r['rep']}] {s}; errors {r.get('errors', 0)}; "
      f"server CPU {r.get('server_cpu_ticks')} ticks; other load {r.get('other_pct')}%"
      + (f"; e.g. {r['error_samples'][:2]}" if r.get("errors") else ""))
EOF
}

fill() { # SYSTEM
	local t0=$SECONDS out
	out=$(load fill-many "$IMAP_PORT" "$POP_MSGS" "${POP_ACCTS[@]}" --parallel 8)
	log "$1: filled $POP_ACCOUNTS POP3 accounts: $out"
	out=$(load fill "$IMAP_PORT" "$BIG_ACCT" "$BIG_MSGS" --connections 8)
	log "$1: filled the $BIG_MSGS-message mailbox: $out"
	out=$(load fill-many "$IMAP_PORT" "$MIX_MSGS" "${MIX_ACCTS[@]}" --parallel 8)
	log "$1: filled $MIX_CLIENTS mixed-load accounts: $out"
	log "$1: filled in $((SECONDS - t0)) s"
}

throughput() { # SYSTEM
	local sys=$1 rep
	# A discarded pass first: warms the page cache and each server's caches
	# (Dovecot's index cache, Posthorn's structure cache) so that every
	# measured repetition sees the same state.
	log "$sys: warm-up pass (discarded)"
	load pop3 "$POP3_PORT" "${POP_ACCTS[@]}" >/dev/null
	load fetch "$IMAP_PORT" "$BIG_ACCT" full --times 1 >/dev/null
	load fetch "$IMAP_PORT" "$BIG_ACCT" headers --times 1 >/dev/null
	load mixed "$IMAP_PORT" 3 "${MIX_ACCTS[@]}" >/dev/null
	for ((rep = 1; rep <= REPS; rep++)); do
		wait_idle
		measure "$sys" pop3 "$rep" -- pop3 "$POP3_PORT" "${POP_ACCTS[@]}" --rounds "$POP_ROUNDS"
		measure "$sys" fetch-full "$rep" -- fetch "$IMAP_PORT" "$BIG_ACCT" full --times 3
		measure "$sys" fetch-headers "$rep" -- fetch "$IMAP_PORT" "$BIG_ACCT" headers --times 3
		measure "$sys" mixed "$rep" -- mixed "$IMAP_PORT" "$MIX_SECS" "${MIX_ACCTS[@]}" --seed "$rep"
		measure "$sys" mixed-persistent "$rep" -- mixed "$IMAP_PORT" "$MIX_SECS" "${MIX_ACCTS[@]}" \
			--seed "$((rep + 100))" --persistent
	done
}

idle_test() { # SYSTEM VARIANT N REP
	wait_idle
	sleep 2 # let the fresh server settle
	measure "$1" idle "$4" "variant=$2" -- idle "$IMAP_PORT" "$3" "${POP_ACCTS[@]}" \
		--login-concurrency "$IDLE_LOGIN_CONCURRENCY" --warmup "$IDLE_WARMUP" \
		--hold "$IDLE_HOLD" --cap-mib "$IDLE_CAP_MIB"
}

run_embedded() {
	local d=$WORK/embedded rep
	mkdir -p "$d"
	setup_embedded "$d"
	log "embedded: posthorn serve pid ${SERVER_PIDS[0]}, IMAP $P_IMAP, POP3 $P_POP3"
	fill embedded
	throughput embedded
	stop_pids "${SERVER_PIDS[@]}"
	# Idle connections: a fresh process each time (same data directory).
	for ((rep = 1; rep <= IDLE_REPS; rep++)); do
		start_posthorn "$d"
		idle_test embedded "stock" "$IDLE_N" "$rep"
		stop_pids "${SERVER_PIDS[@]}"
		if ((MMAP_VARIANT)); then
			# Diagnostic: glibc's mmap threshold fixed at 1 MiB, so argon2's
			# 19 MiB working memory is returned to the system after each login.
			start_posthorn "$d" MALLOC_MMAP_THRESHOLD_=1048576
			idle_test embedded "MALLOC_MMAP_THRESHOLD_=1048576" "$IDLE_N" "$rep"
			stop_pids "${SERVER_PIDS[@]}"
		fi
	done
	grep -c 'panicked at' "$d/serve.log" >/dev/null && log "embedded: panics in $d/serve.log:" \
		"$(grep -m2 'panicked at' "$d/serve.log")" || true
}

run_dovecot() {
	local rep
	setup_dovecot
	log "dovecot: $(dovecot --version), master pid ${SERVER_PIDS[0]}, IMAP $D_IMAP, POP3 $D_POP3"
	fill dovecot
	throughput dovecot
	stop_pids "${SERVER_PIDS[@]}"
	for ((rep = 1; rep <= IDLE_REPS; rep++)); do
		start_dovecot 0
		idle_test dovecot "default (process per connection)" "$IDLE_N_DOVECOT_DEFAULT" "$rep"
		stop_pids "${SERVER_PIDS[@]}"
		start_dovecot 1
		idle_test dovecot "tuned (client_limit 1000)" "$IDLE_N" "$rep"
		stop_pids "${SERVER_PIDS[@]}"
	done
	local w
	w=$(grep -c -E 'Warning|Error|Fatal|Panic' "$WORK/dovecot/dovecot.log" || true)
	((w == 0)) || log "dovecot: $w warnings/errors in its log, e.g.:" \
		"$(grep -E 'Warning|Error|Fatal|Panic' "$WORK/dovecot/dovecot.log" | sort -u -k4 | head -3)"
}

# ---------------------------------------------------------------- main

main() {
	[[ $(id -u) == 0 ]] || die "run as root (installs packages, runs Dovecot, reads other processes' smaps)"
	install_prereqs
	# 10,000 client sockets here and 10,000 in the server: raise the soft limit
	# to the hard one (children inherit it).
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	local need=$((IDLE_N + 1000))
	if (($(ulimit -n) < need)); then
		log "open-files limit $(ulimit -n) < $need: IDLE_N lowered to $(($(ulimit -n) - 1000))"
		IDLE_N=$(($(ulimit -n) - 1000))
	fi
	WORK=$(mktemp -d /var/tmp/posthorn-imapbench.XXXXXX)
	chmod 755 "$WORK" # Dovecot's mail processes (uid $VMAIL_UID) traverse it
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	RESULTS=$WORK/results.jsonl
	: >"$RESULTS"
	if [[ " $SYSTEMS " == *" embedded "* ]]; then
		# A private copy: other builds in the workspace cannot swap it mid-run.
		cp "$POSTHORN" "$WORK/posthorn"
		POSTHORN=$WORK/posthorn
		log "posthorn: $POSTHORN ($("$POSTHORN" --version 2>/dev/null || echo '?'))"
	fi
	log "$(nproc) CPUs; $(uname -r); open files $(ulimit -n); work dir $WORK"
	local t0=$SECONDS sys
	for sys in $SYSTEMS; do
		case $sys in
		embedded) run_embedded ;;
		dovecot) run_dovecot ;;
		*) die "unknown system $sys" ;;
		esac
	done
	{
		echo
		echo "## IMAP/POP3 benchmark $(date -u +'%Y-%m-%d %H:%M UTC') on $(hostname)"
		echo
		echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -r);" \
			"$( [[ " $SYSTEMS " == *" dovecot "* ]] && dovecot --version | sed 's/^/Dovecot /');" \
			"medians of $REPS runs (idle: $IDLE_REPS run); $((SECONDS - t0)) s in all."
		echo "POP3: $POP_ACCOUNTS clients in parallel, each its own account of $POP_MSGS messages" \
			"(4–6 KB), $POP_ROUNDS sessions per client. FETCH: one client, a $BIG_MSGS-message INBOX," \
			"median of 3 commands. Mixed: $MIX_CLIENTS clients, one account each (~$MIX_MSGS messages), $MIX_SECS s." \
			"Idle: LOGIN, SELECT INBOX (200 messages), IDLE; $IDLE_LOGIN_CONCURRENCY logins in flight," \
			"$IDLE_WARMUP warm-up sessions before the 'before' sample."
		echo
		load report "$RESULTS"
	} | tee "$HERE/last-imap-results.md"
	cp "$RESULTS" "$HERE/last-imap-results.jsonl"
}

main "$@"
