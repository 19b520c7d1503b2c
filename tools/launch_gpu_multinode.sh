#!/usr/bin/env bash
# Launch hat_jax on N GPU nodes over ssh: one process per node, joined by jax.distributed.
#
#   tools/launch_gpu_multinode.sh --hosts=node0,node1 --config=configs/hat.py:small \
#       --workdir=/shared/runs/hat_small [--port=8476] [--repo-dir=~/hat_jax] [--dry-run] [-- --config.train.steps=1000]
#
# Node i gets JAX_COORDINATOR_ADDRESS=<first host>:<port>, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i, which
# hat_jax.distributed.maybe_initialize turns into jax.distributed.initialize(); each process drives all
# GPUs of its node (jax.local_devices()). --workdir must be on storage every node sees (NFS, Lustre,
# gs://): all processes write one orbax checkpoint there. Arguments after `--` go to hat_jax.main.
# Under SLURM no launcher is needed: `srun --nodes=N --ntasks-per-node=1 python -m hat_jax.main ...`
# (jax auto-detects SLURM). --dry-run prints the per-node commands instead of running them.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "launch_gpu_multinode.sh: $*" >&2; echo "Run with --help for usage." >&2; exit 2; }

hosts="" config="" workdir="" port=8476 repo_dir="~/hat_jax" dry_run=0 python="python3"
extra=()
while (($#)); do
  case "$1" in
    --hosts=*) hosts="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --repo-dir=*) repo_dir="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1' (flags use --name=value; pass hat_jax.main flags after --)" ;;
  esac
  shift
done

[[ -n "$hosts" ]] || die "--hosts=node0,node1,... is required (node0 runs the coordinator)"
[[ -n "$config" ]] || die "--config is required, e.g. --config=configs/hat.py:small"
[[ -n "$workdir" ]] || die "--workdir is required and must be shared by all nodes (NFS/Lustre/gs://)"
[[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "--port must be a TCP port number, got '$port'"
IFS=',' read -r -a nodes <<< "$hosts"
num=${#nodes[@]}
coordinator="${nodes[0]}:${port}"

quoted_extra=""
for a in "${extra[@]+"${extra[@]}"}"; do quoted_extra+=" $(printf '%q' "$a")"; done

pids=()
for i in "${!nodes[@]}"; do
  node="${nodes[$i]}"
  [[ -n "$node" ]] || die "--hosts has an empty entry: '$hosts'"
  remote="cd ${repo_dir} && JAX_COORDINATOR_ADDRESS=${coordinator} JAX_NUM_PROCESSES=${num} JAX_PROCESS_ID=${i}"
  remote+=" ${python} -m hat_jax.main --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir")${quoted_extra}"
  if ((dry_run)); then
    echo "ssh ${node} $(printf '%q' "$remote")"
  else
    ssh "$node" "$remote" 2>&1 | sed "s/^/[${node}] /" &
    pids+=($!)
  fi
done

status=0
for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid" || status=$?; done
exit "$status"
