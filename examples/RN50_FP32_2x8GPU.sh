#!/usr/bin/env bash
# ResNet-50 v1.5, FP32, 2 nodes x 8 GPUs (NVIDIA's per-GPU batch 96: global 1536), 90 epochs, on MXNet's parameter
# server: one worker (8 GPUs, kvstore dist_device_sync) and one server per host of $HOSTFILE (default
# examples/hosts.2x8), started over ssh; the scheduler on this host at the address given with --dist-addr.
# Usage: examples/RN50_FP32_2x8GPU.sh [toolkit dir] --dist-addr <this host's address> [more flags ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
exec "$root/runner" -n 8 -b 96 --dtype float32 --hostfile "${HOSTFILE:-$root/examples/hosts.2x8}" "$@"
