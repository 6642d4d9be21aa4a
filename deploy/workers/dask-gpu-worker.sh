#!/usr/bin/env bash
# Join this host's GPUs to a Dask cluster for `lipzoo audit --runner dask://SCHEDULER:8786` (deploy/README.md).
#
#   deploy/workers/dask-gpu-worker.sh tcp://gpu-head:8786              # one worker per GPU found by nvidia-smi
#   deploy/workers/dask-gpu-worker.sh tcp://gpu-head:8786 --gpus 0,1
#   deploy/workers/dask-gpu-worker.sh tcp://127.0.0.1:8786 --cpu 2     # 2 CPU workers, no GPU resource
#
# On the scheduler host: `dask scheduler --host 0.0.0.0 --port 8786` (needs `pip install 'lipzoo[dask]'`).
# Each GPU gets its own worker process that sees only that GPU and advertises `--resources GPU=1`; lipzoo
# annotates bound tasks with resources={"GPU": 1}, so one task holds one GPU. Workers need lipzoo installed
# (the same version as the flow host: tasks are pickled by reference to lipzoo's modules) and the flow host's
# PREFECT_API_URL (bound tasks report their state to the Prefect server from the worker).
set -euo pipefail
set -m  # background jobs keep SIGINT (non-interactive bash would start them with SIGINT ignored)
sched="${1:?usage: dask-gpu-worker.sh tcp://SCHEDULER:8786 [--gpus 0,1 | --cpu N]}"; shift
gpus="" cpu=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) gpus="$2"; shift 2 ;;
    --cpu) cpu="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ "$cpu" = 0 ] && [ -z "$gpus" ] && command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
fi
if [ -z "${PREFECT_API_URL:-}" ]; then
  echo "dask-gpu-worker: warning: PREFECT_API_URL is unset, so every worker process starts its own temporary" \
       "Prefect server (slow, and its task runs never reach your UI); export the flow host's PREFECT_API_URL" >&2
fi
export DASK_LOGGING__DISTRIBUTED="${DASK_LOGGING__DISTRIBUTED:-warning}"
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; }
trap stop INT TERM
host=$(hostname -s 2>/dev/null || hostname)
if [ -n "$gpus" ]; then
  IFS=, read -r -a list <<< "$gpus"
  for i in "${list[@]}"; do
    CUDA_VISIBLE_DEVICES="$i" dask worker "$sched" --nthreads 1 --resources GPU=1 --name "$host-gpu$i" \
      --no-dashboard &
    pids+=($!)
  done
else
  [ "$cpu" -gt 0 ] || cpu=1
  CUDA_VISIBLE_DEVICES="" dask worker "$sched" --nworkers "$cpu" --nthreads 1 --name "$host-cpu" --no-dashboard &
  pids+=($!)
fi
wait
