#!/usr/bin/env bash
# Join this host to a Ray cluster for `lipzoo audit --runner ray://HEAD:10001` (deploy/README.md).
# Not exercised on the development machine (ray is not installed there); the commands are Ray's own.
#
#   head:      ray start --head --port 6379 --ray-client-server-port 10001 --include-dashboard false
#   GPU host:  deploy/workers/ray-gpu-node.sh HEAD:6379            # advertises every GPU nvidia-smi sees
#
# lipzoo submits bound tasks with remote_options(num_gpus=1): Ray runs one such task per GPU.
set -euo pipefail
head="${1:?usage: ray-gpu-node.sh HEAD:6379}"
n=0
if command -v nvidia-smi >/dev/null 2>&1; then n=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l); fi
export RAY_USAGE_STATS_ENABLED=0
exec ray start --address "$head" --num-gpus "$n" --block
