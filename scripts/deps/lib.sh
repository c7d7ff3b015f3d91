# Helpers sourced by scripts/deps/*.sh. Each step is idempotent: it installs only what is missing.
need_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "Missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
        return 1
    fi
    if [ ! -f /tmp/.fileconveyor-apt-updated ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && touch /tmp/.fileconveyor-apt-updated
    fi
    echo "Installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
