#!/usr/bin/env bash
# Installs or removes the appliance's systemd service files:
#
#   systemd/install.sh install      (or `make install-service`)
#   systemd/install.sh uninstall    (or `make uninstall-service`)
#
# Variables (environment; pass the same ones to uninstall as to install):
#   DESTDIR        staging root for packaging; empty means the running system (needs root)
#   APPLIANCE_BIN  the daemon's console script, written into ExecStart
#                  (default /opt/appliance/.venv/bin/appliance)
#   UNITDIR        default /usr/lib/systemd/system, the vendor location: operators change the unit
#                  with drop-ins under /etc/systemd/system/appliance.service.d/, which an upgrade
#                  never overwrites. UNITDIR=/etc/systemd/system suits a hand-managed host.
#   SYSUSERSDIR    default /usr/lib/sysusers.d
#   TMPFILESDIR    default /usr/lib/tmpfiles.d
#   DOCDIR         default /usr/share/doc/appliance (the unit's Documentation= points there)
#   PURGE=1        uninstall also deletes /etc/appliance and /var/lib/appliance (config, keys,
#                  usage database, models); without it both are kept
#
# The config /etc/appliance/appliance.toml is installed only where none exists; the example is
# always installed beside the README as appliance.toml.example. On the running system (DESTDIR
# empty) install also creates the account and folders (systemd-sysusers, systemd-tmpfiles) and
# reloads systemd; uninstall stops and disables the service first. The `appliance` account is
# never deleted (systemd-sysusers never removes accounts: files may still belong to its UID).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"

DESTDIR="${DESTDIR:-}"
APPLIANCE_BIN="${APPLIANCE_BIN:-/opt/appliance/.venv/bin/appliance}"
UNITDIR="${UNITDIR:-/usr/lib/systemd/system}"
SYSUSERSDIR="${SYSUSERSDIR:-/usr/lib/sysusers.d}"
TMPFILESDIR="${TMPFILESDIR:-/usr/lib/tmpfiles.d}"
DOCDIR="${DOCDIR:-/usr/share/doc/appliance}"
PURGE="${PURGE:-0}"

# Fixed: the unit's --config and ReadOnlyPaths=, and the tmpfiles and sysusers lines, name them.
CONFDIR=/etc/appliance
STATEDIR=/var/lib/appliance
DEFAULT_BIN=/opt/appliance/.venv/bin/appliance

UNIT="$DESTDIR$UNITDIR/appliance.service"
SYSUSERS="$DESTDIR$SYSUSERSDIR/appliance.conf"
TMPFILES="$DESTDIR$TMPFILESDIR/appliance.conf"
DOC_README="$DESTDIR$DOCDIR/README.md"
DOC_EXAMPLE="$DESTDIR$DOCDIR/appliance.toml.example"
CONFIG="$DESTDIR$CONFDIR/appliance.toml"

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 2; }

live() { [ -z "$DESTDIR" ]; }
systemd_running() { [ -d /run/systemd/system ]; }

check() {
    # ExecStart= takes the path verbatim and sed substitutes it: allow plain path characters only.
    case "$APPLIANCE_BIN" in
        /*) ;;
        *) die "APPLIANCE_BIN must be an absolute path, got '$APPLIANCE_BIN'" ;;
    esac
    if [[ ! "$APPLIANCE_BIN" =~ ^[A-Za-z0-9._/+@-]+$ ]]; then
        die "APPLIANCE_BIN may hold only letters, digits and . _ / + @ -, got '$APPLIANCE_BIN'"
    fi
    for dir in "$UNITDIR" "$SYSUSERSDIR" "$TMPFILESDIR" "$DOCDIR"; do
        case "$dir" in /*) ;; *) die "install folders must be absolute paths, got '$dir'" ;; esac
    done
    if live && [ "$(id -u)" -ne 0 ]; then
        die "installing into the running system needs root (or set DESTDIR to stage the files)"
    fi
}

do_install() {
    check
    install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$SYSUSERSDIR" "$DESTDIR$TMPFILESDIR" "$DESTDIR$DOCDIR"
    local unit_text
    unit_text="$(sed "s|^ExecStart=$DEFAULT_BIN |ExecStart=$APPLIANCE_BIN |" "$HERE/appliance.service")"
    grep -q "^ExecStart=$APPLIANCE_BIN serve " <<<"$unit_text" || die "could not set ExecStart in appliance.service"
    printf '%s\n' "$unit_text" | install -m 0644 /dev/stdin "$UNIT"
    install -m 0644 "$HERE/appliance.sysusers.conf" "$SYSUSERS"
    install -m 0644 "$HERE/appliance.tmpfiles.conf" "$TMPFILES"
    install -m 0644 "$REPO/README.md" "$DOC_README"
    install -m 0644 "$HERE/appliance.toml" "$DOC_EXAMPLE"
    say "installed $UNIT (ExecStart=$APPLIANCE_BIN), $SYSUSERS, $TMPFILES, $DESTDIR$DOCDIR"

    if live; then
        # The account before the folders: tmpfiles hands /var/lib/appliance to it.
        systemd-sysusers "$SYSUSERS"
        systemd-tmpfiles --create "$TMPFILES"
    fi
    install -d -m 0755 "$DESTDIR$CONFDIR"
    if [ -e "$CONFIG" ]; then
        say "kept the existing $CONFIG (the new example is $DOC_EXAMPLE)"
    else
        install -m 0644 "$HERE/appliance.toml" "$CONFIG"
        say "installed the example config as $CONFIG"
    fi

    if live; then
        [ -x "$APPLIANCE_BIN" ] || say "warning: $APPLIANCE_BIN is not an executable yet"
        if systemd_running; then
            systemctl daemon-reload
            say "next: systemctl enable --now appliance (an upgrade: systemctl try-restart appliance)"
        fi
    fi
}

do_uninstall() {
    check
    if live && systemd_running; then
        systemctl disable --now appliance.service || true
    fi
    rm -f "$UNIT" "$SYSUSERS" "$TMPFILES" "$DOC_README" "$DOC_EXAMPLE"
    rmdir "$DESTDIR$DOCDIR" 2>/dev/null || true
    if [ "$PURGE" = 1 ]; then
        rm -rf "$DESTDIR$CONFDIR" "$DESTDIR$STATEDIR"
        say "removed the service files, $DESTDIR$CONFDIR and $DESTDIR$STATEDIR"
    else
        say "removed the service files; kept the config and state (PURGE=1 deletes $DESTDIR$CONFDIR and $DESTDIR$STATEDIR)"
    fi
    if live && systemd_running; then
        systemctl daemon-reload
    fi
}

case "${1:-}" in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) die "usage: $0 install|uninstall (see the comment at the top for the variables)" ;;
esac
