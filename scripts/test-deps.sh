#!/usr/bin/env bash
# Installs, idempotently and without prompts, the programs and packages the tests drive.
set -euo pipefail

# Debian packages: command -> package.
declare -A APT=(
  [unshare]=util-linux
  [mosquitto_pub]=mosquitto-clients
  [mosquitto_sub]=mosquitto-clients
  [openssl]=openssl
  [chromium]=chromium
  [node]=nodejs
  [npm]=npm
)
missing=()
for cmd in "${!APT[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT[$cmd]}")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python packages: import name -> pip requirement.
declare -A PIP=(
  [paho]=paho-mqtt
  [boto3]=boto3
  [awscli]=awscli
  [deltalake]=deltalake
  [duckdb]=duckdb
  [pyarrow]=pyarrow
  [moto.server]='moto[server]'
  [websocket]=websocket-client
)
need=()
for module in "${!PIP[@]}"; do
  python3 -c "import $module" >/dev/null 2>&1 || need+=("${PIP[$module]}")
done
if ((${#need[@]})); then
  python3 -m pip install --quiet --disable-pip-version-check "${need[@]}"
fi

# npm packages: package -> version, each under $XDG_CACHE_HOME/freshet/<package> (else ~/.cache/freshet/<package>),
# where the tests (tests/src/kinesalite.rs) and `freshet bench api` look.
declare -A NPM=(
  [kinesalite]=3.3.3
)
for pkg in "${!NPM[@]}"; do
  prefix="${XDG_CACHE_HOME:-$HOME/.cache}/freshet/$pkg"
  [ -f "$prefix/node_modules/$pkg/package.json" ] \
    || npm install --silent --no-audit --no-fund --prefix "$prefix" "$pkg@${NPM[$pkg]}" >/dev/null
done

command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
echo "test dependencies present"
