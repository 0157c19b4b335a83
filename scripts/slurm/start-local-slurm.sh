#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this (Debian/Ubuntu) machine, without systemd, so that
# tests/test_slurm.py can run real sweeps through Hydra's submitit launcher (scripts/test.sh calls
# this, then exports IFT_SLURM=1). Stop it with scripts/slurm/stop-local-slurm.sh.
#   munged -> [mariadbd -> slurmdbd] -> slurmctld -> slurmd, all started by hand, all as root.
# Idempotent: installs packages only if missing, (re)writes the config, starts only what is not
# already running (restarts slurmctld/slurmd if slurm.conf changed), waits until the node is idle.
#
# Environment knobs (all optional):
#   SLURM_LOCAL_ACCOUNTING=1   1: MariaDB + slurmdbd so that `sacct` works (submitit needs sacct to
#                              notice jobs that die without writing a result, e.g. scancel/timeout;
#                              without it such a job.result() hangs forever). 0: no accounting.
#   SLURM_LOCAL_CPUS=<n>       CPUs to advertise (default: nproc). More than nproc = oversubscribe.
#   SLURM_LOCAL_PARTITION=debug
#   SLURM_LOCAL_DB_PORT=13306  TCP port (127.0.0.1 only) of the private MariaDB instance
#   SLURM_LOCAL_TIMEOUT=60     seconds to wait for each daemon / for the node to become idle
#   SLURM_LOCAL_CRED_EXPIRE=10 AuthInfo=cred_expire: also how long a requeued job (preemption,
#                              `scontrol requeue`, submitit's checkpoint) waits before it may start
#                              again; Slurm's default is 120 s, which makes requeue tests slow.
#                              (sched_interval=2 below: such a job becoming eligible is no event, so
#                              only the periodic main scheduler starts it, by default every 60 s)
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "start-local-slurm.sh: needs root (or sudo)" >&2; exit 1; }
  exec sudo -E bash "$0" "$@"
fi

ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
DB_PORT=${SLURM_LOCAL_DB_PORT:-13306}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
CRED_EXPIRE=${SLURM_LOCAL_CRED_EXPIRE:-10}
STATE=/var/lib/slurm-local          # controller state, slurmd spool, MariaDB datadir
LOGS=/var/log/slurm-local
RUN=/run/slurm-local                # pid files, MariaDB socket
CONF=/etc/slurm/slurm.conf          # default path: sbatch/srun/sinfo find it without SLURM_CONF
DBDCONF=/etc/slurm/slurmdbd.conf
export DEBIAN_FRONTEND=noninteractive

T_START=$(date +%s%3N)
log() { local ms=$(( $(date +%s%3N) - T_START )); printf '[start-local-slurm +%d.%03ds] %s\n' $((ms/1000)) $((ms%1000)) "$*"; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive PIDFILE NAME: true if the pid in PIDFILE is alive and its command name starts with NAME
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "^$2" "/proc/$pid/comm" 2>/dev/null
}
# wait_for SECONDS CMD...: poll CMD every 0.2s until it succeeds
wait_for() {
  local t=$1; shift
  local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.2
  done
}
# stop_pid PIDFILE NAME: SIGTERM the daemon recorded in PIDFILE (only if it is NAME), wait, SIGKILL
stop_pid() {
  pid_alive "$1" "$2" || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

mkdir -p "$RUN"
exec 9>"$RUN/start.lock"   # daemons below are started with 9>&- so they do not inherit the lock
flock -w $(( TIMEOUT * 5 )) 9 || die "another start-local-slurm.sh holds $RUN/start.lock"

# ---------------------------------------------------------------- 1. packages
# every command this script (and submitit: sbatch, sacct, squeue, scancel, scontrol) uses, by package
tools="slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client sacct:slurm-client scontrol:slurm-client
       squeue:slurm-client scancel:slurm-client sinfo:slurm-client munged:munge munge:munge unmunge:munge"
if [ "$ACCOUNTING" = 1 ]; then
  tools="$tools slurmdbd:slurmdbd sacctmgr:slurm-client mariadbd:mariadb-server
         mariadb-install-db:mariadb-server mariadb-admin:mariadb-client mariadb:mariadb-client"
fi
need=()
for pair in $tools; do
  pkg=${pair#*:}
  command -v "${pair%%:*}" >/dev/null 2>&1 || [[ " ${need[*]} " == *" $pkg "* ]] || need+=("$pkg")
done
# the daemons' users come with their packages' postinst
id munge >/dev/null 2>&1 || [[ " ${need[*]} " == *" munge "* ]] || need+=(munge)
if [ "$ACCOUNTING" = 1 ] && ! id mysql >/dev/null 2>&1; then
  [[ " ${need[*]} " == *" mariadb-server "* ]] || need+=(mariadb-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get to install them"
  log "installing: ${need[*]}"
  apt-get update -qq || { sleep 5; apt-get update -qq; } || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >"/tmp/start-local-slurm.apt.log" 2>&1 \
    || { tail -20 /tmp/start-local-slurm.apt.log; die "apt-get install failed"; }
  log "packages installed"
fi
# packages' postinst may leave nothing running (policy-rc.d / no systemd) - we start everything below

# ---------------------------------------------------------------- 2. dirs + config
mkdir -p "$STATE/ctld" "$STATE/slurmd" "$LOGS" "$RUN" /etc/slurm
HOST=$(hostname -s)
NCPU=$(nproc)
CPUS=${SLURM_LOCAL_CPUS:-$NCPU}
MEM_TOTAL=$(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo)   # MiB; no procps needed
if [ "$MEM_TOTAL" -gt 4096 ]; then MEM=$(( MEM_TOTAL - 1024 )); else MEM=$(( MEM_TOTAL * 3 / 4 )); fi
if [ "$CPUS" = "$NCPU" ]; then
  # exact topology as slurmd sees it (avoids "Node reconfigured socket/core boundaries")
  NODELINE=$(slurmd -C | head -1 | sed -E "s/RealMemory=[0-9]+/RealMemory=$MEM/")
  OVERRIDES=""
else
  NODELINE="NodeName=$HOST CPUs=$CPUS RealMemory=$MEM"
  OVERRIDES="SlurmdParameters=config_overrides"
fi

if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

NEWCONF=$(cat <<EOF
# generated by start-local-slurm.sh
ClusterName=localci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( MEM / CPUS ))
$ACCT
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
$OVERRIDES
$NODELINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
CONF_CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEWCONF" ]; then
  printf '%s\n' "$NEWCONF" > "$CONF"; CONF_CHANGED=1
fi

# ---------------------------------------------------------------- 3. munge
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  log "created munge key"
fi
chown -R munge:munge /etc/munge; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge; chmod 755 /run/munge
if ! pid_alive /run/munge/munged.pid munged; then
  rm -f /run/munge/munge.socket.2*
  runuser -u munge -- munged 9>&-     # daemonizes itself, writes /run/munge/munged.pid
  wait_for "$TIMEOUT" bash -c 'munge -n | unmunge' || die "munged did not come up (see /var/log/munge/munged.log)"
  log "munged started (pid $(cat /run/munge/munged.pid))"
else
  log "munged already running (pid $(cat /run/munge/munged.pid))"
fi

# ---------------------------------------------------------------- 4. accounting: MariaDB + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  DBDIR=$STATE/mysql; DBRUN=$RUN/mysql
  mkdir -p "$DBRUN"; chown mysql:mysql "$DBRUN"
  MYSQL_ARGS=(--no-defaults --user=mysql --datadir="$DBDIR" --socket="$DBRUN/mysqld.sock"
              --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DBRUN/mariadbd.pid"
              --log-error="$LOGS/mariadbd.log" --innodb-buffer-pool-size=256M
              --innodb-lock-wait-timeout=900 --skip-name-resolve)
  if [ ! -d "$DBDIR/mysql" ]; then
    mkdir -p "$DBDIR"; chown mysql:mysql "$DBDIR"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DBDIR" --skip-test-db \
      --auth-root-authentication-method=socket >"$LOGS/mariadb-install-db.log" 2>&1 \
      || { tail -20 "$LOGS/mariadb-install-db.log"; die "mariadb-install-db failed"; }
    log "initialized MariaDB datadir $DBDIR"
  fi
  if ! pid_alive "$DBRUN/mariadbd.pid" mariadbd; then
    setsid nohup mariadbd "${MYSQL_ARGS[@]}" >>"$LOGS/mariadbd.out" 2>&1 < /dev/null 9>&- &
    wait_for "$TIMEOUT" mariadb-admin --no-defaults --socket="$DBRUN/mysqld.sock" ping \
      || { tail -20 "$LOGS/mariadbd.log"; die "mariadbd did not come up"; }
    log "mariadbd started (pid $(cat "$DBRUN/mariadbd.pid"), 127.0.0.1:$DB_PORT)"
  else
    log "mariadbd already running (pid $(cat "$DBRUN/mariadbd.pid"))"
  fi
  mariadb --no-defaults --socket="$DBRUN/mysqld.sock" -uroot -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmlocal';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmlocal';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || die "could not create slurm DB user"

  cat > "$DBDCONF" <<EOF
# generated by start-local-slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurmlocal
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBDCONF"    # slurmdbd refuses a world-readable config
  if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    slurmdbd 9>&-                      # daemonizes itself
    wait_for "$TIMEOUT" sacctmgr -n show cluster \
      || { tail -20 "$LOGS/slurmdbd.log"; die "slurmdbd did not come up"; }
    log "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid"))"
  else
    log "slurmdbd already running (pid $(cat "$RUN/slurmdbd.pid"))"
  fi
fi

# ---------------------------------------------------------------- 5. slurmctld + slurmd
if [ "$CONF_CHANGED" = 1 ]; then
  if pid_alive "$RUN/slurmd.pid" slurmd || pid_alive "$RUN/slurmctld.pid" slurmctld; then
    log "slurm.conf changed: restarting slurmctld/slurmd"
  fi
  stop_pid "$RUN/slurmd.pid" slurmd
  stop_pid "$RUN/slurmctld.pid" slurmctld
fi
if ! pid_alive "$RUN/slurmctld.pid" slurmctld; then
  slurmctld -i 9>&-                    # daemonizes; -i: ignore unreadable old state files
  wait_for "$TIMEOUT" scontrol ping || { tail -20 "$LOGS/slurmctld.log"; die "slurmctld did not come up"; }
  log "slurmctld started (pid $(cat "$RUN/slurmctld.pid"))"
else
  log "slurmctld already running (pid $(cat "$RUN/slurmctld.pid"))"
fi
if ! pid_alive "$RUN/slurmd.pid" slurmd; then
  slurmd 9>&-                          # daemonizes
  wait_for "$TIMEOUT" pid_alive "$RUN/slurmd.pid" slurmd || { tail -20 "$LOGS/slurmd.log"; die "slurmd did not come up"; }
  log "slurmd started (pid $(cat "$RUN/slurmd.pid"))"
else
  log "slurmd already running (pid $(cat "$RUN/slurmd.pid"))"
fi

# ---------------------------------------------------------------- 6. wait for the node
node_ready() {
  local s; s=$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -1)
  case "$s" in
    idle|mix|alloc) return 0 ;;
    drain*|down*|drng) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1; return 1 ;;
    *) return 1 ;;
  esac
}
wait_for "$TIMEOUT" node_ready || { sinfo -N -l; tail -20 "$LOGS/slurmd.log"; die "node $HOST never became idle"; }
log "cluster ready (accounting=$ACCOUNTING)"
sinfo
