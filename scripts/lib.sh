# Shared helpers for the scripts in this folder (sourced, not run).

step() { printf '\n==> %s\n' "$*" >&2; }

# The toolchain named in rust-toolchain.toml, with its components and the
# wasm target. rustup's auto-install may be off, so install explicitly.
ensure_rust_toolchain() {
  command -v rustup >/dev/null 2>&1 || { echo "rustup is required (https://rustup.rs)" >&2; exit 1; }
  local channel
  channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
  rustup toolchain install "$channel" --profile minimal \
    --component rustfmt --component clippy --target wasm32-unknown-unknown >/dev/null
}

# Node.js 20 or newer with npm (the SDK build, the page and browser tests).
ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "Node.js 20 or newer with npm is required (https://nodejs.org)" >&2
    exit 1
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if (( major < 20 )); then
    echo "Node.js $(node --version) is too old: 20 or newer is required" >&2
    exit 1
  fi
}

# `npm ci` in folder $1 (default: .) when its node_modules is missing or
# older than its package-lock.json.
ensure_npm_deps() {
  local dir=${1:-.}
  if [[ ! -d "$dir/node_modules" || "$dir/package-lock.json" -nt "$dir/node_modules" ]]; then
    (cd "$dir" && npm ci --no-audit --no-fund)
    touch "$dir/node_modules"
  fi
}

# Debian packages, installed with apt-get when missing (needs root).
ensure_apt_packages() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  (( ${#missing[@]} == 0 )) && return 0
  if [[ $(id -u) != 0 ]]; then
    echo "missing Debian packages: ${missing[*]} (install them as root)" >&2
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# True when file $1 is missing or older than any file under the paths that
# follow.
is_stale() {
  local target=$1
  shift
  [[ ! -e "$target" ]] && return 0
  [[ -n $(find "$@" -newer "$target" -type f -print -quit 2>/dev/null) ]]
}

# Waits (at most $2 seconds) for the first line of file $1 and prints it.
wait_first_line() {
  local file=$1 seconds=$2 i
  for ((i = 0; i < seconds * 10; i++)); do
    if [[ -s "$file" ]] && head -n1 "$file" | grep -q .; then
      head -n1 "$file"
      return 0
    fi
    sleep 0.1
  done
  return 1
}
