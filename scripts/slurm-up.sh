#!/usr/bin/env bash
# A one-node SLURM on this machine, for the tests marked `cluster` (docs/cluster.md): munge, then
# slurmctld and slurmd with a slurm.conf whose one node is this machine, sized from nproc and free.
# Idempotent: a cluster that already answers `sinfo` is left as it is. Needs root and Debian's
# packages (apt-get install -y slurm-wlm munge); accounting is off (no slurmdbd, no sacct).
set -euo pipefail

if [ "$(id -u)" != 0 ] || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm-up.sh: needs root and the slurm-wlm and munge packages (apt-get install -y slurm-wlm munge)" >&2
    exit 2
fi
answers() { timeout 10 sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|alloc'; }
if answers; then
    echo "slurm-up.sh: SLURM already up ($(sinfo -h -o '%N %c CPUs %m MB %T'))"
    exit 0
fi

# munge: one key, the daemon as the munge user.
mkdir -p /etc/munge /var/log/munge /var/lib/munge /run/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- munged

# slurm.conf: this machine as the only node, a little memory left to the system.
node=$(hostname -s)
cpus=$(nproc)
memory=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
# Written by scripts/slurm-up.sh: a one-node cluster for tests.
ClusterName=local
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again after this many seconds (120 by default): tests requeue jobs.
AuthInfo=cred_expire=5
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Schedule every second (a requeued job starts again at once; the default loop is 60 s).
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Ended jobs stay visible to squeue/scontrol for this many seconds (there is no sacct).
MinJobAge=600
KillWait=10
# A job that asks for no memory gets its CPUs' share, not the whole node.
DefMemPerCPU=$(( memory / cpus ))
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
    if answers; then
        echo "slurm-up.sh: SLURM up ($(sinfo -h -o '%N %c CPUs %m MB %T'))"
        exit 0
    fi
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm-up.sh: SLURM did not answer sinfo within 30 s; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
