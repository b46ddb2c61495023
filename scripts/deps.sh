#!/usr/bin/env bash
# Installs the Debian packages fairkv builds and tests with, when some are missing.
# Sourced by scripts/demo and scripts/test.
fairkv_packages=(g++ cmake ninja-build pkg-config nlohmann-json3-dev libcli11-dev libfmt-dev
  libpcre2-dev libgtest-dev libgmock-dev libbenchmark-dev libopenmpi-dev openmpi-bin
  libcpp-httplib-dev python3 python3-pip python3-venv iproute2)

fairkv_install_deps() {
  local missing=()
  for p in "${fairkv_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "installing: ${missing[*]}"
  local sudo=()
  [[ $(id -u) -ne 0 ]] && sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Configures and builds into build/ (Release, warnings on). Extra arguments go to cmake.
fairkv_build() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
  cmake --build "$root/build" -j"$(nproc)"
}
