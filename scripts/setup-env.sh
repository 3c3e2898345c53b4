# Sourced by scripts/run-tests and .ci/run: installs what muc_guard's tests need.
#
#   ensure_system_packages   Prosody + prosody-modules, ejabberd (and python3-venv),
#                            without letting the packages start a system server
#   find_pythons             the python3.11/3.12/3.13 interpreters on this machine
#   make_venv PY DIR         a venv with muc_guard installed editable with [test]
#
# Everything is idempotent: a second run installs nothing new.

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

ensure_system_packages() {
    local missing=()
    command -v prosody >/dev/null 2>&1 || missing+=(prosody)
    [ -d /usr/lib/prosody/modules/mod_ping_muc ] || missing+=(prosody-modules)
    python3 -c "import ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
    missing+=($(ejabberd_missing))
    if [ ${#missing[@]} -eq 0 ]; then
        stop_system_ejabberd
        return 0
    fi
    log "installing Debian packages: ${missing[*]}"
    # Debian starts a package's service on install; a system Prosody would
    # bind public ports. policy-rc.d exiting 101 forbids that (and is honoured
    # by invoke-rc.d and deb-systemd-invoke). Keep an existing one untouched.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# muc_guard setup: start no services\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        added_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    if [ "$added_policy" = 1 ]; then $SUDO rm -f "$policy"; fi
    # In case something started it anyway: the tests run their own servers.
    if pgrep -x prosody >/dev/null 2>&1 || pgrep -f '^lua.* /usr/bin/prosody' >/dev/null 2>&1; then
        log "stopping a system Prosody started by the package"
        $SUDO service prosody stop >/dev/null 2>&1 || true
    fi
    stop_system_ejabberd
}

# ejabberd (Debian 12: 23.01, Debian 13: 24.12) is the tests' second server;
# they run it privately (muc_guard/testing/ejabberd.py), never as a service.
ejabberd_missing() {
    dpkg-query -W -f='${Status}' ejabberd 2>/dev/null | grep -q 'ok installed' || echo ejabberd
}

# Stop and disable a system ejabberd the package started or would start at
# boot: its beam.smp and epmd run as the ejabberd user.
stop_system_ejabberd() {
    dpkg-query -W -f='${Status}' ejabberd 2>/dev/null | grep -q 'ok installed' || return 0
    $SUDO deb-systemd-helper disable ejabberd.service >/dev/null 2>&1 || true
    $SUDO update-rc.d ejabberd disable >/dev/null 2>&1 || true
    pgrep -u ejabberd >/dev/null 2>&1 || return 0
    log "stopping a system ejabberd started by the package"
    $SUDO service ejabberd stop >/dev/null 2>&1 || true
    local pids
    pids=$(pgrep -u ejabberd 2>/dev/null | tr '\n' ' ')
    if [ -n "$pids" ]; then $SUDO kill $pids 2>/dev/null || true; fi
}

# Print the interpreters found, one per line, 3.11 first.
find_pythons() {
    local v py
    for v in 3.11 3.12 3.13; do
        py=""
        if "python$v" -c "import sys" >/dev/null 2>&1; then
            py=$(command -v "python$v")
        else
            for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v"*/bin/"python$v"; do
                if [ -x "$cand" ]; then py="$cand"; fi
            done
        fi
        if [ -n "$py" ]; then echo "$py"; fi
    done
}

# make_venv PYTHON DIR: create DIR and install muc_guard[test] into it.
make_venv() {
    local py="$1" dir="$2"
    if [ ! -x "$dir/bin/python" ]; then
        log "creating $dir with $py"
        "$py" -m venv "$dir"
    fi
    local pip=("$dir/bin/python" -m pip install -q --disable-pip-version-check)
    local minor
    minor=$("$dir/bin/python" -c 'import sys; print(sys.version_info[1])')
    if [ "$minor" -lt 13 ]; then
        "${pip[@]}" -e ".[test]"
        return
    fi
    # Python 3.13: aioxmpp pins lxml~=4.0, which cannot build there. Install a
    # current lxml, aioxmpp without its dependency check, then everything else
    # (see README, "Installing on Python 3.13").
    "${pip[@]}" "lxml>=5"
    "${pip[@]}" --no-deps "aioxmpp>=0.13,<0.14"
    "${pip[@]}" $("$dir/bin/python" - <<'PY'
import importlib.metadata as m
print(" ".join(r.split(";")[0].replace(" ", "")
               for r in m.requires("aioxmpp") if not r.startswith("lxml")))
PY
)
    "${pip[@]}" --no-deps -e .
    "${pip[@]}" $("$dir/bin/python" - <<'PY'
import importlib.metadata as m
reqs = []
for r in m.requires("muc_guard"):
    spec, _, marker = r.partition(";")
    if marker and 'extra == "test"' not in marker:
        continue
    if not spec.replace(" ", "").lower().startswith("aioxmpp"):
        reqs.append(spec.replace(" ", ""))
print(" ".join(reqs))
PY
)
}
