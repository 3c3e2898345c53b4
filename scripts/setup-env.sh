# Sourced by scripts/run-tests and .ci/run: installs what muc_guard's tests need.
#
#   ensure_system_packages   Prosody + prosody-modules, ejabberd (and python3-venv),
#                            without letting the packages start a system server
#   prosody_servers          the Prosody launchers to test against, one per line
#                            ("VERSION PATH"): the system one, and on Debian 12
#                            also Prosody 13 (bookworm-backports), unpacked with
#                            dpkg -x under .venv/prosody13 beside the system 0.12
#   find_pythons             the python3.11/3.12/3.13 interpreters on this machine
#   make_venv PY DIR         a venv with muc_guard installed editable with [test,slixmpp]
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

# make_venv PYTHON DIR: create DIR and install muc_guard[test,slixmpp] into it.
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
        "${pip[@]}" -e ".[test,slixmpp]"
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
    if marker and 'extra == "test"' not in marker and 'extra == "slixmpp"' not in marker:
        continue
    if not spec.replace(" ", "").lower().startswith("aioxmpp"):
        reqs.append(spec.replace(" ", ""))
print(" ".join(reqs))
PY
)
}

# The version of the Prosody behind launcher $1 (from its CFG_SOURCEDIR).
prosody_version_of() {
    local src
    src=$(sed -n "s/^CFG_SOURCEDIR='\(.*\)';*$/\1/p" "$1" | head -n1)
    cat "${src:-/usr/lib/prosody}/prosody.version" 2>/dev/null
}

# The Debian mirror the machine's own apt sources use (deb822 or one-line).
debian_mirror() {
    local codename="$1" uri
    uri=$(awk -v c="$codename" '
        /^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == c) { print u; exit } }
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk -v c="$codename" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i + 1) == c) { print $i; exit } } }' \
            /etc/apt/sources.list | head -n1)
    fi
    printf '%s\n' "$uri"
}

# Prosody 13 from <codename>-backports, beside the system Prosody: the .deb is
# fetched with a private apt configuration (the machine's apt sources are not
# touched), unpacked into $dir and its launchers pointed at the unpacked
# sources. Its Lua libraries are those the system package pulled in. Prints
# the launcher; fails loudly when it cannot be had.
ensure_private_prosody13() {
    local dir="$1" codename="$2"
    local launcher="$dir/root/usr/bin/prosody"
    case "$(prosody_version_of "$launcher" 2>/dev/null)" in
        13.*) printf '%s\n' "$launcher"; return 0 ;;
    esac
    local mirror
    mirror=$(debian_mirror "$codename")
    if [ -z "$mirror" ]; then
        log "ERROR: no apt source for $codename found: cannot fetch Prosody 13"
        return 1
    fi
    log "installing Prosody 13 from $codename-backports into $dir"
    rm -rf "$dir"
    mkdir -p "$dir/apt/lists/partial" "$dir/debs" "$dir/root"
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s-backports main\n' \
        "$mirror" "$codename" > "$dir/apt/sources.list"
    local apt_opts=(-o Dir::Etc::sourcelist="$dir/apt/sources.list" -o Dir::Etc::sourceparts=-
                    -o Dir::State::Lists="$dir/apt/lists" -o APT::Get::List-Cleanup=0)
    if ! apt-get "${apt_opts[@]}" update -qq >&2; then
        log "ERROR: apt-get update of $codename-backports failed"
        return 1
    fi
    local version
    version=$(apt-cache "${apt_opts[@]}" madison prosody 2>/dev/null \
              | awk -F'|' '{ gsub(/ /, "", $2); if ($2 ~ /^13\./) { print $2; exit } }')
    if [ -z "$version" ]; then
        log "ERROR: $codename-backports offers no Prosody 13"
        return 1
    fi
    # apt-get download as root drops to _apt, which needs to write there.
    chmod 777 "$dir/debs" 2>/dev/null || true
    if ! (cd "$dir/debs" && apt-get "${apt_opts[@]}" download -qq "prosody=$version" >&2); then
        log "ERROR: apt-get download prosody=$version failed"
        return 1
    fi
    dpkg -x "$dir"/debs/prosody_*.deb "$dir/root"
    local src="$(cd "$dir/root/usr/lib/prosody" && pwd)" f
    for f in prosody prosodyctl; do
        sed -i "s|^CFG_SOURCEDIR=.*|CFG_SOURCEDIR='$src';|; s|^CFG_PLUGINDIR=.*|CFG_PLUGINDIR='$src/modules/';|" \
            "$dir/root/usr/bin/$f"
    done
    case "$(prosody_version_of "$launcher")" in
        13.*) printf '%s\n' "$launcher" ;;
        *) log "ERROR: the unpacked Prosody in $dir is not 13"; return 1 ;;
    esac
}

# "VERSION LAUNCHER" for every Prosody the tests run against, system first.
# Debian 13 brings Prosody 13 itself: that one only (0.12 is not packaged
# there). Debian 12 brings 0.12, and Prosody 13 comes from backports.
prosody_servers() {
    local system system_version codename
    system=$(command -v prosody) || { log "ERROR: no prosody on PATH"; return 1; }
    system_version=$(prosody_version_of "$system")
    if [ -z "$system_version" ]; then
        log "ERROR: cannot tell the version of $system"
        return 1
    fi
    printf '%s %s\n' "$system_version" "$system"
    case "$system_version" in
        13.*|1[4-9].*|[2-9][0-9].*) return 0 ;;
    esac
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    local p13
    p13=$(ensure_private_prosody13 "$PWD/.venv/prosody13" "$codename") || return 1
    printf '%s %s\n' "$(prosody_version_of "$p13")" "$p13"
}
