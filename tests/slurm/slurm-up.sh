#!/usr/bin/env bash
# tests/slurm/slurm-up.sh [up|down] - a real single-host SLURM cluster for the integration tests in
# tests/slurm/, built from Debian bookworm packages (slurm-wlm 22.05 + munge, slurmdbd + MariaDB so that
# sacct works), with no systemd, run as root. See tests/slurm/README.md.
#
#   slurm-up.sh [up]  install what is missing, write the config for this host, start the daemons in the
#                     background and wait until the node is idle. Idempotent: while the cluster is healthy
#                     and its config unchanged it does nothing; if a daemon died or the config changed it
#                     first stops the daemons it started before, then starts them again.
#   slurm-up.sh down  cancel every job, then stop exactly the daemons this script started.
#
# Environment (all optional; use the same SLURM_CI_DIR for up and down):
#   SLURM_CI_DIR          state, spool, MariaDB data, logs and pid file      (default /var/lib/slurm-ci)
#   SLURM_CI_ACCOUNTING   dbd:  slurmdbd + MariaDB, a working sacct (default). submitit polls sacct for job
#                               states: without it a cancelled job (e.g. a dependent of a failed job) looks
#                               UNKNOWN forever and job.result() never returns.
#                         none: no accounting (faster start; sacct exits 1)
#   SLURM_CI_CPUS         CPUs the node advertises; more than the real cores is fine   (default 8)
#   SLURM_CI_MEM_MB       RealMemory of the node                   (default 90% of MemTotal)
#   SLURM_CI_PARTITION    partition name; must match cluster_configs/slurm_ci.yaml   (default debug)
#   SLURM_CI_CRED_EXPIRE  AuthInfo cred_expire in s (min 5); also how long a requeued job waits before it
#                         may start again (SLURM's default: 120)    (default 10)
#   SLURM_CI_TIMEOUT      seconds to wait for each daemon, and for the node to become idle   (default 60)
#   SLURM_CI_EXTRA_CONF   lines appended to slurm.conf
# Writes /etc/slurm/slurm.conf (and slurmdbd.conf), where sbatch, squeue, sacct and submitit read it.
# Daemons started: $SLURM_CI_DIR/pids, one line "name pid starttime" each.
set -euo pipefail

MODE=${1:-up}
DIR=${SLURM_CI_DIR:-/var/lib/slurm-ci}
ACCT=${SLURM_CI_ACCOUNTING:-dbd}
CPUS=${SLURM_CI_CPUS:-8}
PART=${SLURM_CI_PARTITION:-debug}
CRED_EXPIRE=${SLURM_CI_CRED_EXPIRE:-10}
TIMEOUT=${SLURM_CI_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
PIDS=$DIR/pids
T0=$EPOCHREALTIME

elapsed() { awk -v a="$EPOCHREALTIME" -v b="$T0" 'BEGIN { printf "%.1f", a - b }'; }
log() { echo "[slurm-$MODE $(elapsed)s] $*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# A recorded pid counts as ours only while /proc still shows that daemon (same comm, same start time),
# so a pid file left behind by an earlier boot or run never makes us signal a reused pid.
starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }
pid_of() { if [ -f "$PIDS" ]; then awk -v n="$1" '$1 == n {print $2}' "$PIDS"; fi; }
running() {  # name: the daemon recorded as "name" is alive (a zombie counts as dead)
  local pid st
  pid=$(pid_of "$1"); [ -n "$pid" ] || return 1
  st=$(awk -v n="$1" '$1 == n {print $3}' "$PIDS")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && [ "$(starttime "$pid")" = "$st" ] \
    && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# ====================================================================================== down
down() {
  [ -f "$PIDS" ] || { log "no $PIDS: nothing to stop"; return 0; }
  # 1. Cancel every job while slurmctld and slurmd still run: slurmstepd and the job processes are not
  #    children of slurmd and would outlive it. Wait up to 15 s, then kill what SLURM still lists.
  if running slurmctld && running slurmd; then
    local jobs p
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086  # one argument per job id
      scancel --quiet $jobs 2>/dev/null || true
      for _ in $(seq 150); do
        [ -z "$(squeue -h -t R,CG,S -o %A 2>/dev/null)" ] \
          && [ -z "$(scontrol listpids 2>/dev/null | awk 'NR > 1')" ] && break
        sleep 0.1
      done
    fi
    for p in $(scontrol listpids 2>/dev/null | awk 'NR > 1 {print $1}'); do
      log "killing leftover job process $p"; kill -KILL "$p" 2>/dev/null || true
    done
  fi
  # 2. The daemons in reverse start order: TERM, wait (30 s for MariaDB, 10 s for the others), KILL.
  local name pid n
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    running $name || continue
    pid=$(pid_of $name)
    kill -TERM "$pid" 2>/dev/null || true
    n=100; [ $name = mariadbd ] && n=300
    for _ in $(seq $n); do running $name || break; sleep 0.1; done
    if running $name; then log "$name ($pid) ignored TERM: KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    log "stopped $name ($pid)"
  done
  rm -f "$PIDS"
}

[ "$(id -u)" = 0 ] || die "must run as root"
case "$MODE" in
  down) down; log "down"; exit 0 ;;
  up) ;;
  *) die "usage: $0 [up|down]" ;;
esac

# ====================================================================================== up
# The host name is read at run time: CI machines are not named like the one this was written on.
HOST=$(hostname -s)
[ -n "$HOST" ] || die "empty hostname"
case "$ACCT" in dbd|none) ;; *) die "SLURM_CI_ACCOUNTING must be dbd or none, not '$ACCT'" ;; esac

wait_for() {  # name, command...: poll every 0.1 s, up to $TIMEOUT s, while the daemon "name" lives
  local name=$1 end=$(( $(date +%s) + TIMEOUT )); shift
  until "$@" >/dev/null 2>&1; do
    if ! running "$name"; then
      tail -n 5 "$DIR/log/$name.out" "$DIR/log/$name.log" 2>/dev/null || true
      die "$name exited during startup (logs: $DIR/log/)"
    fi
    [ "$(date +%s)" -lt "$end" ] || die "$name not ready after ${TIMEOUT}s (logs: $DIR/log/)"
    sleep 0.1
  done
}
start_bg() {  # name (= the daemon's comm), log file, command...: detached in its own session
  local name=$1 logf=$2; shift 2
  # Without job control the background child is no process-group leader, so setsid (and setpriv,
  # nohup) exec without forking: $! is the daemon itself.
  setsid nohup "$@" >>"$logf" 2>&1 </dev/null &
  echo "$name $! $(starttime $!)" >>"$PIDS"
}
port_busy() {  # port: something listens on it (read from /proc, so iproute2 is not needed)
  local hex; hex=$(printf '%04X' "$1")
  awk -v p="$hex" 'FNR > 1 && $4 == "0A" { split($2, a, ":"); if (a[2] == p) found = 1 } END { exit !found }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1; }

# SLURM itself is pointed at 127.0.0.1 and needs no name lookup, but job code does: submitit's
# TorchDistributedEnvironment sets MASTER_ADDR to the node name (without it, gloo init hangs).
if ! getent hosts "$HOST" >/dev/null; then
  log "hostname $HOST does not resolve: adding '127.0.0.1 $HOST' to /etc/hosts"
  echo "127.0.0.1 $HOST" >>/etc/hosts
fi

# -------------------------------------------------------------------------- 1. packages, if missing
pkgs="slurm-wlm munge"
bins="/usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch /usr/bin/sacct /usr/sbin/munged"
if [ "$ACCT" = dbd ]; then
  pkgs="$pkgs slurmdbd mariadb-server"; bins="$bins /usr/sbin/slurmdbd /usr/sbin/mariadbd"
fi
missing=0; for b in $bins; do [ -x "$b" ] || missing=1; done
if [ $missing = 1 ]; then
  log "installing $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086  # one argument per package
  apt_install() { apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 $pkgs >/dev/null; }
  apt_install || { log "apt-get install failed: apt-get update, then again"; apt-get update -q >/dev/null; apt_install; }
  log "installed slurm $(dpkg-query -W -f='${Version}' slurmctld)"
fi

# -------------------------------------------------------------------------- 2. config for this host
if [ -n "${SLURM_CI_MEM_MB:-}" ]; then MEM=$SLURM_CI_MEM_MB
else MEM=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo); fi
if [ "$ACCT" = dbd ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
NEWCONF=$(mktemp)
trap 'rm -f "$NEWCONF"' EXIT
cat >"$NEWCONF" <<EOF
# generated by tests/slurm/slurm-up.sh (host $HOST, accounting $ACCT)
ClusterName=ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# cred_expire (min 5) is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no cgroups (no systemd here; proctrack/cgroup kills every job at once): track job processes through
# /proc, no CPU binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# start batch jobs at submit (default batch_sched_delay=3 s), backfill every 1 s (default 30 s), full
# scheduler pass every 2 s (default 60 s: requeued jobs would otherwise wait up to a minute more)
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# lets the node advertise more CPUs than the hardware has, so that several 1-CPU jobs run at once
SlurmdParameters=config_overrides
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
JobRequeue=1
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
SlurmdTimeout=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=$PART Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
${SLURM_CI_EXTRA_CONF:-}
EOF

# -------------------------------------------------------------------------- 3. already up?
if cmp -s "$NEWCONF" "$CONF" && running slurmctld && running slurmd \
   && { [ "$ACCT" = none ] || running slurmdbd; } && [ "$(node_state)" = idle ]; then
  log "already up, node $HOST idle (pids: $(awk '{printf "%s %s  ", $1, $2}' "$PIDS"))"; exit 0
fi
if [ -f "$PIDS" ]; then
  log "not (fully) up, or config changed: stopping the daemons started before"
  down
fi
for p in 6817 6818; do port_busy $p && die "port $p is taken by a SLURM daemon this script did not start"; done
if [ "$ACCT" = dbd ] && port_busy 6819; then die "port 6819 is taken by a slurmdbd this script did not start"; fi
mkdir -p "$DIR"/ctld "$DIR"/spool "$DIR"/log /etc/slurm
chown slurm:slurm "$DIR"/ctld "$DIR"/spool "$DIR"/log
cp "$NEWCONF" "$CONF"; chmod 644 "$CONF"
: >"$PIDS"

# -------------------------------------------------------------------------- 4. munge
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then log "creating munge key"; mungekey -c -f -k /etc/munge/munge.key; fi
chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key   # munged refuses other modes
munge_ok() { munge -n | unmunge; }
if munge_ok >/dev/null 2>&1; then
  log "a munged this script did not start is running: using it"
else
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  start_bg munged "$DIR/log/munged.out" setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
  wait_for munged munge_ok
  log "munged up"
fi

# -------------------------------------------------------------------------- 5. MariaDB + slurmdbd
if [ "$ACCT" = dbd ]; then
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  db_ok() { mariadb-admin ping; }   # default socket /run/mysqld/mysqld.sock; slurmdbd uses it too
  if db_ok >/dev/null 2>&1; then
    log "a MariaDB this script did not start is running: using it"
  else
    # own data dir under $DIR, no /etc/mysql config (--no-defaults), unix socket only (no TCP 3306)
    if [ ! -d "$DIR/mysql/mysql" ]; then
      install -d -o mysql -g mysql -m 0750 "$DIR/mysql"
      mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql" \
        --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.out" 2>&1
    fi
    start_bg mariadbd "$DIR/log/mariadbd.out" /usr/sbin/mariadbd --no-defaults --user=mysql \
      --datadir="$DIR/mysql" --skip-networking --socket=/run/mysqld/mysqld.sock \
      --pid-file="$DIR/mysql/mariadbd.pid" --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900
    wait_for mariadbd db_ok
    log "MariaDB up"
  fi
  # Job ids restart at 1 with a fresh StateSaveLocation: then drop the older run's records, or
  # `sacct -j 1` (what submitit polls) would also report that older job 1.
  [ -e "$DIR/ctld/job_state" ] || mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db"
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-ci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat >"$DBDCONF" <<EOF
# generated by tests/slurm/slurm-up.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm-ci
EOF
  chown slurm:slurm "$DBDCONF"; chmod 600 "$DBDCONF"   # slurmdbd refuses a config others can read
  start_bg slurmdbd "$DIR/log/slurmdbd.out" /usr/sbin/slurmdbd -D
  wait_for slurmdbd sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster | grep -qw ci || sacctmgr -i add cluster ci >/dev/null
  log "slurmdbd up"
fi

# -------------------------------------------------------------------------- 6. slurmctld + slurmd
# -D: foreground (backgrounded here, so $! is the daemon); -i: ignore unreadable state of an older run
start_bg slurmctld "$DIR/log/slurmctld.out" /usr/sbin/slurmctld -D -i
ctld_ok() { scontrol ping | grep -q 'is UP'; }
wait_for slurmctld ctld_ok
log "slurmctld up"
start_bg slurmd "$DIR/log/slurmd.out" /usr/sbin/slurmd -D -N "$HOST"

# -------------------------------------------------------------------------- 7. wait for an idle node
node_idle() {
  local st; st=$(node_state)
  [ "$st" = idle ] && return 0
  case "$st" in down*|drain*|fail*|inval*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;; esac
  return 1
}
wait_for slurmd node_idle
log "node $HOST idle, partition $PART, accounting $ACCT: up in $(elapsed) s"
sinfo
