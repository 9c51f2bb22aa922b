#!/usr/bin/env bash
# Install the peer servers and client libraries that `vtpu bench` and
# benchmarks/bench_network.py compare against (DESIGN §8): Redis, memcached, etcd,
# redis-py + hiredis, pymemcache, matplotlib, FAISS (faiss-cpu). Idempotent: installed pieces are skipped.
# Never needed by the tests; the benchmarks skip a missing peer with a clear line.
# Nothing is started here: the benchmarks start each server on 127.0.0.1 themselves.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_peers: not root and no sudo; skipping the Debian packages" >&2
  fi
fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v memcached    >/dev/null 2>&1 || missing+=(memcached)
command -v etcd         >/dev/null 2>&1 || missing+=(etcd-server)

if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "install_peers: apt-get install ${missing[*]}" >&2
    $SUDO apt-get update -qq
    # policy-rc.d in containers keeps the packaged services from starting; where it
    # does not, the services bind loopback by default and the benchmarks use their own.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      || echo "install_peers: apt-get failed; those peers will be skipped" >&2
  else
    echo "install_peers: no apt-get; missing peers will be skipped: ${missing[*]}" >&2
  fi
else
  echo "install_peers: redis-server, memcached, etcd already installed" >&2
fi

PY="${PYTHON:-python3}"
pymissing=()
for spec in "redis:redis" "hiredis:hiredis" "pymemcache:pymemcache" "matplotlib:matplotlib" \
            "faiss:faiss-cpu"; do
  mod="${spec%%:*}"; pkg="${spec##*:}"
  "$PY" -c "import $mod" >/dev/null 2>&1 || pymissing+=("$pkg")
done
if [ "${#pymissing[@]}" -gt 0 ]; then
  echo "install_peers: pip install ${pymissing[*]}" >&2
  "$PY" -m pip install -q "${pymissing[@]}" || echo "install_peers: pip failed; those peers will be skipped" >&2
else
  echo "install_peers: redis, hiredis, pymemcache, matplotlib, faiss already importable" >&2
fi

for exe in redis-server memcached etcd; do
  if command -v "$exe" >/dev/null 2>&1; then echo "  found $exe"; else echo "  missing $exe (skipped by the benchmarks)"; fi
done
