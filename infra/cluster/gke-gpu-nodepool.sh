#!/usr/bin/env bash
# GKE node pool for the GPU steps. Label and taint match pipelines/settings.yaml (gpu_pool);
# GKE installs the NVIDIA driver with gpu-driver-version=default. Spot VMs are fine: training
# retries and resumes from its S3 checkpoint.
set -euo pipefail
CLUSTER="${CLUSTER:-ml-cluster}"
REGION="${REGION:-us-central1}"
gcloud container node-pools create t2iops-gpu \
  --cluster "$CLUSTER" --region "$REGION" \
  --machine-type g2-standard-24 \
  --accelerator "type=nvidia-l4,count=2,gpu-driver-version=default" \
  --spot \
  --enable-autoscaling --min-nodes 0 --max-nodes 8 --num-nodes 0 \
  --node-labels "t2iops.io/pool=gpu" \
  --node-taints "nvidia.com/gpu=present:NoSchedule"
