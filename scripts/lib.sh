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
