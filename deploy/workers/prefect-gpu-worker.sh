#!/usr/bin/env bash
# Start one Prefect process worker per GPU of this host for the lipzoo-gpu work pool (deploy/README.md).
#
#   PREFECT_API_URL=http://prefect.internal:4200/api deploy/workers/prefect-gpu-worker.sh          # all GPUs
#   deploy/workers/prefect-gpu-worker.sh --gpus 0,2 --pool lipzoo-gpu                               # some GPUs
#   deploy/workers/prefect-gpu-worker.sh --cpu                                                      # no GPU
#
# Each worker sees exactly one GPU (CUDA_VISIBLE_DEVICES, inherited by its flow runs: a process worker starts
# every run with the worker's environment plus the deployment's job_variables.env) and runs one flow run at a
# time (--limit 1), so one audit holds one GPU. Ctrl-C (or SIGTERM to this script) stops them all; Prefect
# workers stop cleanly on SIGINT, so that is what they are sent.
set -euo pipefail
set -m  # background jobs keep SIGINT (non-interactive bash would start them with SIGINT ignored)
pool=lipzoo-gpu gpus="" cpu=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pool) pool="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --cpu) cpu=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;  # passed to `prefect worker start` (e.g. --work-queue gpu)
  esac
done
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://prefect.internal:4200/api}"
if [ "$cpu" = 0 ] && [ -z "$gpus" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
  fi
  if [ -z "$gpus" ]; then
    echo "prefect-gpu-worker: no GPU found (nvidia-smi); starting one CPU worker (--cpu)" >&2
    cpu=1
  fi
fi
prefect=${PREFECT:-prefect}
pids=()
stop() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait; }
trap stop INT TERM
host=$(hostname -s 2>/dev/null || hostname)
if [ "$cpu" = 1 ]; then
  CUDA_VISIBLE_DEVICES="" "$prefect" worker start --pool "$pool" --type process --limit 1 \
    --name "$host-cpu" ${extra[@]+"${extra[@]}"} &
  pids+=($!)
else
  IFS=, read -r -a list <<< "$gpus"
  for i in "${list[@]}"; do
    CUDA_VISIBLE_DEVICES="$i" "$prefect" worker start --pool "$pool" --type process --limit 1 \
      --name "$host-gpu$i" ${extra[@]+"${extra[@]}"} &
    pids+=($!)
  done
fi
wait
