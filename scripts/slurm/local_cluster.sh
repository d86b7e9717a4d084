#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests and trying things out.
#
#   scripts/slurm/local_cluster.sh start DIR   # install (if absent) and start munge, slurmctld, slurmd
#   scripts/slurm/local_cluster.sh stop DIR    # stop what `start DIR` started, by PID
#
# DIR receives slurm.conf, the daemons' state, logs and pid files. Clients, daemons and jobs find
# the cluster through SLURM_CONF=DIR/slurm.conf. Only processes this script started are stopped:
# their PIDs are listed in DIR/started.pids. Needs root (the daemons run as root, as on a real
# cluster's nodes) and, when Slurm is not installed, apt-get.
set -euo pipefail

cmd=${1:?usage: local_cluster.sh start|stop DIR}
dir=${2:?usage: local_cluster.sh start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pids="$dir/started.pids"

install_if_absent() {
  if [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged ]] && command -v sbatch >/dev/null; then
    return
  fi
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "Slurm is not installed and cannot be installed here (needs root and apt-get)" >&2
    exit 3
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
}

wait_for_pidfile() {  # the daemons fork; their pid files name the process that stays
  local file=$1
  for _ in $(seq 100); do
    [[ -s $file ]] && kill -0 "$(cat "$file")" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "daemon did not start: no live pid in $file (see the logs in $dir)" >&2
  return 1
}

start() {
  if [[ $(id -u) != 0 ]]; then
    echo "starting a local Slurm cluster needs root" >&2
    exit 3
  fi
  install_if_absent
  : >"$pids"
  if ! munge -n </dev/null >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    wait_for_pidfile /run/munge/munged.pid
    cat /run/munge/munged.pid >>"$pids"
  fi
  local host cpus mem
  host=$(hostname)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS: not the cores
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  mkdir -p "$dir/state" "$dir/spool"
  cat >"$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=30
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  /usr/sbin/slurmctld
  wait_for_pidfile "$dir/slurmctld.pid"
  cat "$dir/slurmctld.pid" >>"$pids"
  /usr/sbin/slurmd
  wait_for_pidfile "$dir/slurmd.pid"
  cat "$dir/slurmd.pid" >>"$pids"
  for _ in $(seq 100); do  # the node registers with the controller
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n1)
    [[ $state == idle* || $state == mix* || $state == alloc* ]] && { echo "$dir/slurm.conf"; return 0; }
    sleep 0.2
  done
  echo "the node did not come up (state: ${state:-none}); see $dir/slurmctld.log and $dir/slurmd.log" >&2
  exit 1
}

stop() {
  [[ -f $pids ]] || return 0
  # newest first: slurmd, slurmctld, then munged
  for pid in $(tac "$pids"); do
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -f "$pids"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) echo "usage: local_cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
