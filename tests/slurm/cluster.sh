#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for the tests (and for trying the slurm profile).
#
#   tests/slurm/cluster.sh install                    # Debian packages, if missing (needs root + apt)
#   tests/slurm/cluster.sh start DIR [accounting|none] # daemons; state, logs and PIDs under DIR
#   tests/slurm/cluster.sh stop DIR                   # stops exactly the PIDs start wrote to DIR/pids
#
# After `start`, `source DIR/env` points sbatch/squeue/sacct (and Snakemake) at the cluster
# (SLURM_CONF). Partitions: `cpu` (default) and `gpu`, both on the node `localhost`; the node's
# memory is declared large (config_overrides) so the workflow's real mem_mb requests fit.
# `accounting` adds MariaDB + slurmdbd (sacct works: the plugin's default status path);
# `none` has no accounting (Snakemake must use `slurm-status-command: squeue`).
# Ports (chosen to avoid a system SLURM/MariaDB): slurmctld 16817, slurmd 16818, slurmdbd 16819,
# MariaDB 13306 on 127.0.0.1.
set -euo pipefail

PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
BINARIES=(slurmctld slurmd slurmdbd sacct sbatch squeue sacctmgr munged mungekey mariadbd mariadb-install-db mariadb)

log() { echo "[slurm-cluster] $*" >&2; }
die() { echo "[slurm-cluster] ERROR: $*" >&2; exit 1; }

have_all() {
    local b
    for b in "${BINARIES[@]}"; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || return 1
    done
}

cmd_install() {
    if have_all; then
        log "already installed: ${PACKAGES[*]}"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "installing ${PACKAGES[*]} needs root"
    log "installing ${PACKAGES[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' own services from starting (we start our own daemons by PID).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; created_policy=1
    fi
    local rc=0
    apt-get install -y -q "${PACKAGES[@]}" >&2 || {
        apt-get update -q >&2 && apt-get install -y -q "${PACKAGES[@]}" >&2
    } || rc=$?
    [ "$created_policy" = 1 ] && rm -f "$policy"
    [ "$rc" = 0 ] || die "apt-get install ${PACKAGES[*]} failed (rc=$rc)"
    have_all || die "installed, but some of ${BINARIES[*]} are still missing"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.2
    done
    log "$what: ok"
}

spawn() {  # spawn NAME COMMAND...: start a foreground daemon in the background, record its PID
    local name=$1; shift
    setsid "$@" </dev/null >"$DIR/log/$name.out" 2>&1 &
    echo "$! $name" >> "$DIR/pids"
    log "started $name (pid $!)"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munge: reusing the running munged"
        return 0
    fi
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    # -F: foreground, so that $! is munged itself.
    spawn munged runuser -u munge -- munged -F
    wait_for 15 munge sh -c 'munge -n | unmunge' || die "munged did not start (see $DIR/log/munged.out)"
}

start_mariadb() {
    local db=$DIR/mysql
    mkdir -p "$db" "$DIR/run/mysqld"
    chown -R mysql:mysql "$db" "$DIR/run/mysqld"
    mariadb-install-db --no-defaults --user=mysql --datadir="$db" --auth-root-authentication-method=socket \
        --skip-test-db >"$DIR/log/mariadb-install.out" 2>&1 || die "mariadb-install-db failed (see $DIR/log/mariadb-install.out)"
    spawn mariadbd mariadbd --no-defaults --user=mysql --datadir="$db" --socket="$DIR/run/mysqld/mysqld.sock" \
        --port=13306 --bind-address=127.0.0.1 --pid-file="$DIR/run/mysqld/mysqld.pid" --skip-log-bin \
        --innodb-buffer-pool-size=64M --log-error="$DIR/log/mariadbd.log"
    wait_for 30 mariadb mariadb --no-defaults -S "$DIR/run/mysqld/mysqld.sock" -u root -e "SELECT 1" \
        || die "MariaDB did not start (see $DIR/log/mariadbd.log)"
    mariadb --no-defaults -S "$DIR/run/mysqld/mysqld.sock" -u root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'fewclip-test';
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'fewclip-test';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
        FLUSH PRIVILEGES;"
}

write_conf() {
    local accounting=$1 node
    # The node as slurmd sees it (CPUs, sockets, cores), named localhost; memory declared large.
    node=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]*/NodeName=localhost/' -e 's/RealMemory=[0-9]*/RealMemory=256000/')
    cat > "$DIR/etc/slurm.conf" <<EOF
ClusterName=fewclip
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=600
SchedulerParameters=sched_interval=2
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
$( if [ "$accounting" = accounting ]; then
    echo "AccountingStorageType=accounting_storage/slurmdbd"
    echo "AccountingStorageHost=localhost"
    echo "AccountingStoragePort=16819"
else
    echo "AccountingStorageType=accounting_storage/none"
fi )
$node State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost Default=NO MaxTime=INFINITE State=UP
EOF
    if [ "$accounting" = accounting ]; then
        cat > "$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=16819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=13306
StorageUser=slurm
StoragePass=fewclip-test
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
        chmod 600 "$DIR/etc/slurmdbd.conf"
    fi
}

cmd_start() {
    DIR=$(realpath -m "$1"); local accounting=${2:-accounting}
    case $accounting in accounting|none) ;; *) die "second argument: accounting or none, not '$accounting'";; esac
    [ "$(id -u)" = 0 ] || die "starting the test cluster needs root"
    have_all || die "SLURM/munge/MariaDB are not installed: run '$0 install' first"
    mkdir -p "$DIR"/{etc,state,spool,run,log,bin}
    chmod 755 "$DIR"
    : > "$DIR/pids"
    export SLURM_CONF=$DIR/etc/slurm.conf
    # The slurm jobstep plugin drops every SLURM_* variable (SLURM_CONF too) before its inner
    # `srun`: a cluster whose slurm.conf is not at the default path needs an srun that knows it.
    mkdir -p "$DIR/bin"
    printf '#!/bin/sh\nSLURM_CONF=%s exec /usr/bin/srun "$@"\n' "$SLURM_CONF" > "$DIR/bin/srun"
    chmod 755 "$DIR/bin/srun"
    printf 'export SLURM_CONF=%s\nexport PATH=%s/bin:$PATH\n' "$SLURM_CONF" "$DIR" > "$DIR/env"
    write_conf "$accounting"
    start_munge
    if [ "$accounting" = accounting ]; then
        start_mariadb
        spawn slurmdbd slurmdbd -D
        wait_for 30 slurmdbd sacctmgr -n list cluster || die "slurmdbd did not answer (see $DIR/log/slurmdbd.log)"
        sacctmgr -i add cluster fewclip >/dev/null 2>&1 || true
    fi
    spawn slurmctld slurmctld -D -c -f "$SLURM_CONF"
    wait_for 30 slurmctld sh -c 'scontrol ping | grep -q UP' || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
    spawn slurmd slurmd -D -N localhost -f "$SLURM_CONF"
    wait_for 60 "node localhost idle" sh -c 'sinfo -h -n localhost -o %t | grep -qx idle' \
        || die "node localhost is not idle: $(sinfo -h -n localhost -o %t 2>&1) (see $DIR/log/slurmd.log)"
    if [ "$accounting" = accounting ]; then
        wait_for 30 "sacct" sacct -X -n --starttime now-1hours || die "sacct does not answer"
    fi
    log "cluster up: SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    DIR=$(realpath -m "$1")
    [ -f "$DIR/pids" ] || { log "nothing to stop ($DIR/pids missing)"; return 0; }
    # Reverse start order; each PID is one we started (setsid made it a session leader: its
    # children, e.g. runuser's munged, are in its process group).
    local pid name pids=()
    while read -r pid name; do pids=("$pid:$name" "${pids[@]}"); done < "$DIR/pids"
    for entry in "${pids[@]}"; do
        pid=${entry%%:*}; name=${entry#*:}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            fi
            log "stopped $name (pid $pid)"
        fi
    done
    : > "$DIR/pids"
}

case ${1:-} in
    install) cmd_install ;;
    start) [ $# -ge 2 ] || die "usage: $0 start DIR [accounting|none]"; cmd_start "$2" "${3:-accounting}" ;;
    stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
    *) die "usage: $0 install | start DIR [accounting|none] | stop DIR" ;;
esac
