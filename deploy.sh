#!/usr/bin/env bash
# ugate host entry point: set up the host environment, run tests, run the
# local Realer cloud emulator. Run `./deploy.sh help` for the subcommands.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=".venv"
REQUIREMENTS="requirements.txt"
REQ_STAMP="$VENV/.requirements.sha256"
APT_PACKAGES=(mosquitto mosquitto-clients socat libfaketime iproute2 iptables)

# On Debian the broker lives in /usr/sbin, which is not on a normal user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

say() { printf '%s\n' "deploy: $*"; }
die() { printf '%s\n' "deploy: error: $*" >&2; exit 1; }

usage() {
    cat <<'EOF'
usage: ./deploy.sh <command> [args...]

commands:
  setup              install Debian packages (mosquitto, mosquitto-clients, socat, libfaketime,
                     iproute2, iptables) if missing, and create/update the Python venv in .venv
                     from requirements.txt
  test [pytest args] run setup, then the host test suite: pytest host_tests [args]
  cloud [args]       run setup, then the local Realer cloud emulator (python -m tools.realer);
                     no args serves in the foreground; subcommands like desired, fault, status
                     are passed through
  sim [--duration S] run setup, then the gateway firmware on the MicroPython unix port against
                     the local Realer cloud, with a small scenario (Ctrl-C stops)
  run DIR            run the firmware on the unix port with DIR as its flash root
  flash --port P --firmware FILE [--baud B]
                     erase an ESP32 and write a MicroPython image with esptool (checks the chip
                     first; offset 0x1000 on an ESP32/S2, 0x0 on an S3/C3/C6)
  deploy --port P [--config DIR] [--no-reset]
                     compile firmware/ with mpy-cross for the board and copy what changed with
                     mpremote (firmware/**.mpy, boot.py, main.py; with --config: config.json,
                     secrets.json and the CA); P: /dev/ttyUSB0, socket://127.0.0.1:N or virtual:DIR
  deploy --flash-root DIR [--config DIR]
                     the same onto the virtual board whose flash root is DIR
  repl --port P      the board's REPL (mpremote ... resume repl; Ctrl-] leaves)
  logs --port P [--reset] [--duration S] [--until TEXT]
                     follow the board's console; --reset restarts the firmware first
  board start|stop|status --flash DIR [--port N]
                     the virtual board: the unix port behind socat on 127.0.0.1:N, DIR as flash
  bench [args]       run setup, then the benchmarks (python -m bench): the firmware on the unix port
                     against the local Realer cloud; writes bench/results/latest.md and latest.json
  help               show this text
EOF
}

# --- setup: system packages -------------------------------------------------

have_dynsec_plugin() {
    local f
    for f in /usr/lib/*/mosquitto_dynamic_security.so /usr/lib/mosquitto_dynamic_security.so; do
        [[ -e "$f" ]] && return 0
    done
    return 1
}

# Prints the names of the missing pieces, one per line (nothing when all present).
missing_system_deps() {
    command -v mosquitto >/dev/null 2>&1 || echo "mosquitto"
    command -v mosquitto_ctrl >/dev/null 2>&1 || echo "mosquitto_ctrl"
    command -v socat >/dev/null 2>&1 || echo "socat"
    # The half-open link test (a network namespace, DROP rules in it) runs only as root,
    # so only root needs them.
    if [[ "$(id -u)" -eq 0 ]]; then
        command -v ip >/dev/null 2>&1 || echo "ip"
        command -v iptables >/dev/null 2>&1 || echo "iptables"
    fi
    have_dynsec_plugin || echo "mosquitto_dynamic_security.so"
    have_libfaketime || echo "libfaketime.so.1"
}

# The wall-clock fault tests (host_tests/test_fault_clock.py) preload it into the firmware.
have_libfaketime() {
    local f
    for f in /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do
        [[ -e "$f" ]] && return 0
    done
    return 1
}

setup_system_packages() {
    local missing
    missing="$(missing_system_deps)"
    if [[ -z "$missing" ]]; then
        say "system packages: ok (${APT_PACKAGES[*]})"
        return 0
    fi
    say "system packages: missing: ${missing//$'\n'/ }"
    if [[ "$(id -u)" -ne 0 ]]; then
        {
            echo "deploy: not running as root, so cannot install them. Run:"
            echo "    sudo apt-get install -y ${APT_PACKAGES[*]}"
            echo "then run ./deploy.sh setup again."
        } >&2
        exit 1
    fi
    say "system packages: installing ${APT_PACKAGES[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
    missing="$(missing_system_deps)"
    [[ -z "$missing" ]] || die "still missing after apt-get install: ${missing//$'\n'/ }"
}

# --- setup: Python venv -----------------------------------------------------

requirements_hash() {
    sha256sum "$REQUIREMENTS" | cut -d' ' -f1
}

setup_venv() {
    [[ -f "$REQUIREMENTS" ]] || die "$REQUIREMENTS not found"
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "venv: creating $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    local want
    want="$(requirements_hash)"
    if [[ -f "$REQ_STAMP" && "$(cat "$REQ_STAMP")" == "$want" ]]; then
        say "venv: ok ($VENV matches $REQUIREMENTS)"
        return 0
    fi
    say "venv: installing $REQUIREMENTS into $VENV (pip, this can take a minute)"
    rm -f "$REQ_STAMP"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
    printf '%s\n' "$want" > "$REQ_STAMP"
    say "venv: done"
}

cmd_setup() {
    setup_system_packages
    setup_venv
}

# --- other commands ---------------------------------------------------------

cmd_test() {
    cmd_setup
    say "test: pytest host_tests $*"
    local rc=0
    "$VENV/bin/python" -m pytest host_tests "$@" || rc=$?
    return "$rc"
}

# Set up, then hand over to a host tool: python -m tools.<module> args...
cmd_tool() {
    local module="$1"
    shift
    cmd_setup
    exec "$VENV/bin/python" -m "tools.$module" "$@"
}

# Run the firmware on the MicroPython unix port with DIR as its flash root.
cmd_run() {
    [[ $# -ge 1 ]] || die "usage: ./deploy.sh run DIR"
    local dir="$1" root
    [[ -d "$dir" ]] || die "no such folder: $dir"
    root="$(pwd)"
    cmd_setup >&2
    cd "$dir"
    MICROPYPATH=".frozen:$root:$root/lib" exec "$root/$VENV/bin/micropython" "$root/main.py"
}


main() {
    local cmd="${1:-help}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        setup) cmd_setup ;;
        test)  cmd_test "$@" ;;
        cloud) cmd_tool realer "$@" ;;
        sim)   cmd_tool sim "$@" ;;
        run)   cmd_run "$@" ;;
        flash|deploy|repl|logs) cmd_tool deploy "$cmd" "$@" ;;  # tools/deploy.py
        board) cmd_tool board "$@" ;;  # tools/board.py: the virtual board
        bench) cmd_setup; exec "$VENV/bin/python" -m bench "$@" ;;  # bench/: not a tools.* module
        help|-h|--help) usage ;;
        *)
            echo "deploy: unknown command: $cmd" >&2
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
