#!/usr/bin/env bash
# Build the project image from infra/docker/Dockerfile, the same file CI and users build.
#
#   bash scripts/build_image.sh                 # GPU variant, tagged t2iops:dev
#   bash scripts/build_image.sh --tag t2iops:x --variant cpu
#   bash scripts/build_image.sh --base debian   # force the Debian base (see below)
#
# Base image: the Dockerfile's default (NVIDIA's CUDA runtime image for the GPU variant) when the
# daemon has it or can pull it. Where it cannot (no access to a container registry), a Debian
# base is made from Debian's packages with debootstrap (about a minute, once: it is kept as
# t2iops/debian-base:<suite>) and the Dockerfile builds on it with that release's Python. The GPU
# variant's CUDA runtime comes from torch's wheels either way and the driver from the node.
#
# Needs a docker daemon and a BuildKit-capable client (`docker buildx`, or a client that still
# has BuildKit built in with DOCKER_BUILDKIT=1, e.g. Debian's docker.io); debootstrap only for
# the Debian base. The host's CA bundle goes to the build as a secret, so a build behind a
# TLS-inspecting proxy trusts what the host trusts, and no layer keeps it.
# Environment: DOCKER (the client), DEBIAN_MIRROR (default: the one apt uses here),
# DEBIAN_SUITE (bookworm), T2IOPS_CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="t2iops:dev"
VARIANT="gpu"
BASE="auto"
EXTRA=()

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) TAG="$2"; shift 2 ;;
    --variant) VARIANT="$2"; shift 2 ;;
    --base) BASE="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) echo "build_image.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$VARIANT" == gpu || "$VARIANT" == cpu ]] || { echo "build_image.sh: --variant is gpu or cpu, not '$VARIANT'" >&2; exit 2; }
[[ "$BASE" == auto || "$BASE" == debian || "$BASE" == default ]] || { echo "build_image.sh: --base is auto, debian or default" >&2; exit 2; }

log() { echo "[build_image] $*" >&2; }

# -- a client that builds with BuildKit -------------------------------------------------------
BUILD=()
for client in ${DOCKER:-} docker /usr/bin/docker; do
  command -v "$client" >/dev/null 2>&1 || continue
  if "$client" buildx version >/dev/null 2>&1; then BUILD=("$client" buildx build --load); DOCKER_CLI="$client"; break; fi
  if DOCKER_BUILDKIT=1 "$client" build --help >/dev/null 2>&1; then BUILD=(env DOCKER_BUILDKIT=1 "$client" build); DOCKER_CLI="$client"; break; fi
done
if [[ ${#BUILD[@]} -eq 0 ]]; then
  echo "build_image.sh: no docker client that can build with BuildKit (install docker buildx, or Debian's docker.io)" >&2
  exit 2
fi
"$DOCKER_CLI" info >/dev/null 2>&1 || { echo "build_image.sh: the docker daemon does not answer ('$DOCKER_CLI info' fails): start dockerd" >&2; exit 2; }

# -- the base ----------------------------------------------------------------------------------
dockerfile_default() { sed -nE "s/^ARG $1=([^[:space:]]+).*/\1/p" "$ROOT/infra/docker/Dockerfile"; }
BASE_ARG="BASE_$(tr '[:lower:]' '[:upper:]' <<<"$VARIANT")"
DEFAULT_BASE="$(dockerfile_default "$BASE_ARG")"
have_image() { "$DOCKER_CLI" image inspect "$1" >/dev/null 2>&1; }
if [[ "$BASE" == auto ]]; then
  if have_image "$DEFAULT_BASE" || "$DOCKER_CLI" pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE=default
  else
    log "cannot pull $DEFAULT_BASE: building on a Debian base instead"
    BASE=debian
  fi
fi

BUILD_ARGS=(--build-arg "VARIANT=$VARIANT")
if [[ "$BASE" == debian ]]; then
  SUITE="${DEBIAN_SUITE:-bookworm}"
  DEBIAN_IMAGE="t2iops/debian-base:$SUITE"
  if ! have_image "$DEBIAN_IMAGE"; then
    command -v debootstrap >/dev/null 2>&1 || { echo "build_image.sh: the Debian base needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
    [[ "$(id -u)" == 0 ]] || { echo "build_image.sh: debootstrap must run as root" >&2; exit 2; }
    MIRROR="${DEBIAN_MIRROR:-}"
    if [[ -z "$MIRROR" ]]; then  # the mirror apt already uses here (deb822 or one-line sources)
      MIRROR="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+\/debian)\/?$/\1/p' | head -n1)"
      [[ -n "$MIRROR" ]] || MIRROR="$(cat /etc/apt/sources.list 2>/dev/null | sed -nE 's/^deb[[:space:]]+([^[:space:]]+\/debian)\/?[[:space:]].*/\1/p' | head -n1)"
      MIRROR="${MIRROR:-http://deb.debian.org/debian}"
    fi
    ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/t2iops-rootfs.XXXXXX")"
    trap 'rm -rf "$ROOTFS"' EXIT
    log "debootstrap $SUITE from $MIRROR (about a minute)"
    start=$(date +%s)
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
      || { tail -n 20 "$ROOTFS.log" >&2; echo "build_image.sh: debootstrap failed (log above)" >&2; exit 1; }
    rm -f "$ROOTFS.log"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | "$DOCKER_CLI" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" >/dev/null
    log "base $DEBIAN_IMAGE made in $(( $(date +%s) - start )) s"
  fi
  # A minbase root has no Python yet: the suite decides which one apt installs.
  case "$SUITE" in bookworm) PYTHON_VERSION=python3.11 ;; trixie) PYTHON_VERSION=python3.13 ;; *) PYTHON_VERSION="" ;; esac
  PYTHON_VERSION="${PYTHON:-$PYTHON_VERSION}"
  [[ -n "$PYTHON_VERSION" ]] || { echo "build_image.sh: unknown Python of Debian $SUITE: set PYTHON=python3.X" >&2; exit 2; }
  BUILD_ARGS+=(--build-arg "$BASE_ARG=$DEBIAN_IMAGE" --build-arg "PYTHON=$PYTHON_VERSION")
fi

CA_BUNDLE="${T2IOPS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
SECRET=()
[[ -s "$CA_BUNDLE" ]] && SECRET=(--secret "id=ca_bundle,src=$CA_BUNDLE")

log "building $TAG ($VARIANT variant, $BASE base)"
start=$(date +%s)
"${BUILD[@]}" --network host -f "$ROOT/infra/docker/Dockerfile" -t "$TAG" \
  "${BUILD_ARGS[@]}" "${SECRET[@]}" ${EXTRA[@]+"${EXTRA[@]}"} "$ROOT"
log "built $TAG in $(( $(date +%s) - start )) s ($("$DOCKER_CLI" image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}') on disk)"
