#!/usr/bin/env bash
# Set up an emulated aarch64 machine for the tests in tests/aarch64 (qemu-user, no ARM board):
#   - apt: qemu-user (+ binfmt registration), the aarch64 cross linker (gcc + libc6-dev-arm64-cross)
#   - .aarch64/sysroot : Debian 12's arm64 CPython 3.11, unpacked from its .debs (not installed)
#   - .aarch64/site    : aarch64 wheels of apache-tvm / apache-tvm-ffi / numpy (+ what the RPC
#                        server needs), installed by the x86 pip with --platform/--target
#   - .aarch64/bin/python3 : launcher (qemu-aarch64 + QEMU_LD_PREFIX + PYTHONPATH)
#   - .aarch64/env.sh  : what the tests read (sourceable; see the end of this file)
# Root on Debian 12 x86-64.  Idempotent: a second run only re-checks (binfmt, cross link, python).
# Usage: bash scripts/setup_aarch64.sh [--force]     (--force: rebuild sysroot + site, re-smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
A64=.aarch64
FORCE=0
case "${1:-}" in
  "") ;;
  --force) FORCE=1 ;;
  *) echo "usage: bash scripts/setup_aarch64.sh [--force]" >&2; exit 2 ;;
esac

# Pinned like the project's own venv (pyproject.toml); cloudpickle is needed by the RPC server's
# popen worker, psutil by its session-timeout cleanup (tornado only by the RPC proxy: not needed).
WHEELS="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy==2.4.6 ml_dtypes==0.7.0 \
typing_extensions==4.16.0 cloudpickle==3.1.3 psutil==7.2.2"
APT_PKGS="qemu-user qemu-user-binfmt binfmt-support gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
SYSROOT_ROOTS="python3.11-minimal:arm64 libpython3.11-stdlib:arm64 libstdc++6:arm64"
QEMU_CPU_DEFAULT=cortex-a53   # the weakest core aarch64-neon claims: ARMv8.0-A + NEON only

T0=$(date +%s)
STEP=""; STEP_T=$T0
DIED=0
die() { DIED=1; echo "setup_aarch64.sh: FAILED in step '$STEP': $*" >&2; exit 1; }
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ] && [ $DIED = 0 ]; then
    echo "setup_aarch64.sh: FAILED in step '$STEP' (exit $rc); see the output above" >&2
  fi
}
trap on_exit EXIT
step() {  # step NAME: print the previous step's time, start a new one
  local now; now=$(date +%s)
  [ -n "$STEP" ] && printf '  [%3ss] %s\n' "$((now - STEP_T))" "$STEP"
  STEP=$1; STEP_T=$now
}

step "preconditions"
[ "$(id -u)" = 0 ] || die "run as root (apt-get, binfmt_misc)"
[ "$(uname -m)" = x86_64 ] || die "this script sets up emulation on x86-64; on an aarch64 machine use the host target"
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs Debian/Ubuntu (apt-get, dpkg)"
if [ -x .venv/bin/python ]; then PIP_PY=.venv/bin/python
elif command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then PIP_PY=python3
else die "no x86 python with pip: run 'bash scripts/setup_env.sh' first (creates .venv)"; fi
mkdir -p "$A64"

step "apt packages ($APT_PKGS)"
export DEBIAN_FRONTEND=noninteractive
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing="$missing $p"
done
arch_added=1
dpkg --print-foreign-architectures | grep -qx arm64 || arch_added=0
sysroot_stamp="$SYSROOT_ROOTS"
need_sysroot=1
[ $FORCE = 0 ] && [ -f "$A64/.stamp-sysroot" ] && [ "$(cat "$A64/.stamp-sysroot")" = "$sysroot_stamp" ] \
  && [ -x "$A64/sysroot/usr/bin/python3.11" ] && need_sysroot=0
if [ $arch_added = 0 ]; then dpkg --add-architecture arm64; fi
if [ -n "$missing" ] || { [ $need_sysroot = 1 ] && ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; }; then
  apt-get update -qq || die "apt-get update failed"
fi
if [ -n "$missing" ]; then
  echo "  installing:$missing"
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null || die "apt-get install$missing failed"
fi

step "binfmt_misc registration of qemu-aarch64"
BM=/proc/sys/fs/binfmt_misc
if ! mountpoint -q "$BM"; then
  mount -t binfmt_misc binfmt_misc "$BM" || die "cannot mount binfmt_misc at $BM (a container without it? run on the host: modprobe binfmt_misc)"
fi
if [ ! -e "$BM/qemu-aarch64" ]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
if [ ! -e "$BM/qemu-aarch64" ]; then  # binfmt-support failed: register by hand (qemu's magic/mask)
  interp=/usr/libexec/qemu-binfmt/aarch64-binfmt-P; flags=P
  [ -e "$interp" ] || { interp=$(command -v qemu-aarch64); flags=""; }
  printf '%s' ":qemu-aarch64:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$interp:$flags" \
    > "$BM/register" || die "writing $BM/register failed"
fi
[ "$(head -n1 "$BM/qemu-aarch64")" = enabled ] || echo 1 > "$BM/qemu-aarch64"
[ "$(head -n1 "$BM/qemu-aarch64")" = enabled ] || die "qemu-aarch64 binfmt handler is not enabled"

step "cross link check (aarch64-linux-gnu-gcc -shared)"
tmpd=$(mktemp -d)
echo 'int bnn_probe(int x) { return x + 1; }' > "$tmpd/p.c"
aarch64-linux-gnu-gcc -shared -fPIC -o "$tmpd/p.so" "$tmpd/p.c" 2> "$tmpd/err" \
  || { cat "$tmpd/err" >&2; die "aarch64-linux-gnu-gcc cannot link a shared object (crti.o: apt-get install libc6-dev-arm64-cross)"; }
rm -rf "$tmpd"

step "arm64 python sysroot ($A64/sysroot)"
if [ $need_sysroot = 1 ]; then
  rm -rf "$A64/debs" "$A64/sysroot" "$A64/.stamp-sysroot" "$A64/.stamp-smoke"
  mkdir -p "$A64/debs" "$A64/sysroot"
  # shellcheck disable=SC2086
  pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
           --no-replaces --no-enhances --no-pre-depends $SYSROOT_ROOTS 2>/dev/null \
         | grep -E '^[a-z0-9].*:arm64$' | grep -vE '^(dpkg|tar|install-info):' | sort -u)
  [ -n "$pkgs" ] || die "apt-cache found no arm64 packages (is 'arm64' a foreign architecture + apt-get update done?)"
  # shellcheck disable=SC2086
  (cd "$A64/debs" && apt-get download -qq $pkgs 2>&1 | grep -v 'unsandboxed' || true)
  n=$(ls "$A64"/debs/*.deb 2>/dev/null | wc -l)
  want=$(echo "$pkgs" | wc -w)
  [ "$n" -eq "$want" ] || die "apt-get download fetched $n of $want arm64 .debs"
  for d in "$A64"/debs/*.deb; do dpkg -x "$d" "$A64/sysroot" || die "dpkg -x $d"; done
  [ -x "$A64/sysroot/usr/bin/python3.11" ] || die "no usr/bin/python3.11 in the sysroot"
  rm -rf "$A64/debs"
  echo "$sysroot_stamp" > "$A64/.stamp-sysroot"
  echo "  $n packages unpacked"
else
  echo "  up to date"
fi

step "aarch64 wheels ($A64/site)"
if [ $FORCE = 1 ] || [ ! -f "$A64/.stamp-site" ] || [ "$(cat "$A64/.stamp-site")" != "$WHEELS" ]; then
  rm -rf "$A64/site" "$A64/site.tmp" "$A64/.stamp-site" "$A64/.stamp-smoke"
  # shellcheck disable=SC2086
  "$PIP_PY" -m pip install -q --no-cache-dir --disable-pip-version-check --target "$A64/site.tmp" \
      --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
      --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: $WHEELS \
    || die "pip could not fetch the aarch64 wheels ($WHEELS)"
  mv "$A64/site.tmp" "$A64/site"
  echo "$WHEELS" > "$A64/.stamp-site"
else
  echo "  up to date"
fi

step "launcher + env file"
mkdir -p "$A64/bin"
launcher=$(cat <<'EOS'
#!/bin/sh
# aarch64 CPython 3.11 under qemu-user (written by scripts/setup_aarch64.sh).
# Children it spawns (sys.executable) run through binfmt_misc and inherit this environment.
A64=$(dirname "$(dirname "$(readlink -f "$0")")")
export QEMU_LD_PREFIX="$A64/sysroot"
export QEMU_CPU="${QEMU_CPU:-cortex-a53}"
export PYTHONPATH="$A64/site${BNN_A64_EXTRA_PYTHONPATH:+:$BNN_A64_EXTRA_PYTHONPATH}"
export PYTHONNOUSERSITE=1
exec qemu-aarch64 "$A64/sysroot/usr/bin/python3.11" "$@"
EOS
)
[ "$(cat "$A64/bin/python3" 2>/dev/null)" = "$launcher" ] || { printf '%s\n' "$launcher" > "$A64/bin/python3"; }
[ -x "$A64/bin/python3" ] || chmod +x "$A64/bin/python3"
envfile=$(cat <<EOS
# aarch64 emulation environment, written by scripts/setup_aarch64.sh; read by tests/aarch64.
# Source it from bash:  . .aarch64/env.sh   (paths follow the file, so the checkout may move).
# PYTHONPATH is deliberately not exported here (it would break the x86 python); the launcher sets it.
BNN_A64_ROOT="\$(cd "\$(dirname "\${BASH_SOURCE[0]:-\$0}")" && pwd)"
export BNN_A64_ROOT
export QEMU_LD_PREFIX="\$BNN_A64_ROOT/sysroot"
export QEMU_CPU="\${QEMU_CPU:-$QEMU_CPU_DEFAULT}"
export BNN_A64_PYTHON="\$BNN_A64_ROOT/bin/python3"
export BNN_A64_PYTHONPATH="\$BNN_A64_ROOT/site"
export BNN_A64_CC="aarch64-linux-gnu-gcc"
EOS
)
[ "$(cat "$A64/env.sh" 2>/dev/null)" = "$envfile" ] || printf '%s\n' "$envfile" > "$A64/env.sh"

step "binfmt exec check (aarch64 ELF run directly)"
out=$(QEMU_LD_PREFIX="$A64/sysroot" QEMU_CPU=$QEMU_CPU_DEFAULT "$A64/sysroot/usr/bin/python3.11" -S -c \
      'import platform; print(platform.machine())' 2>&1) || die "running the aarch64 python through binfmt failed: $out"
[ "$out" = aarch64 ] || die "aarch64 python reports '$out'"

step "smoke: import tvm under qemu"
smoke_stamp="$WHEELS|$sysroot_stamp"
if [ $FORCE = 1 ] || [ "$(cat "$A64/.stamp-smoke" 2>/dev/null)" != "$smoke_stamp" ]; then
  out=$("$A64/bin/python3" -c '
import platform, numpy, cloudpickle, psutil, tvm, tvm.rpc, tvm.exec.rpc_server
print(platform.machine(), "tvm", tvm.__version__, "numpy", numpy.__version__)
' 2>&1) || die "import tvm under qemu failed: $out"
  echo "  $out" | tail -n 1
  case "$out" in *"aarch64 tvm 0.27"*) ;; *) die "unexpected smoke output: $out";; esac
  echo "$smoke_stamp" > "$A64/.stamp-smoke"
else
  echo "  already passed for these wheels (--force to re-run)"
fi

step "done"
trap - EXIT
echo "aarch64 emulation ready in $(( $(date +%s) - T0 ))s: . $A64/env.sh; $A64/bin/python3 -c 'import tvm'"
echo "tests: .venv/bin/python -m pytest tests/aarch64 -m aarch64"
