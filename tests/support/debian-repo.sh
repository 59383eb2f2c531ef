#!/usr/bin/env bash
# Build a local apt repository holding exactly the Debian 12 packages that the provisioning
# steps of profiles/debian-stack.toml install, with those of their dependencies the test
# image lacks, and cache it on this machine.
#
#   tests/support/debian-repo.sh [IMAGE_DIR] [CACHE_DIR]     (as root)
#
# IMAGE_DIR: the test image's directory (tests/support/debian-image.sh makes it; its
# packages.txt says what the image already has); built or found when omitted. CACHE_DIR:
# /var/cache/lab-test. Makes CACHE_DIR/debian-12-repo-HASH/ holding the .debs, Packages,
# Packages.gz, Release (a flat repository: `deb [trusted=yes] http://HOST:PORT/ ./`) and
# packages.txt (name and version of each .deb), and prints its path on stdout (progress on
# stderr). HASH is the sha256 of the recipe: this script, the mirrors and the image's package
# list, so a rebuilt image or a changed list never finds a stale repository. A warm cache
# answers at once; only a cold one needs the network.
#
# Why this way: the tests' VMs install with real apt from a repository served by the host,
# so they need no network; the packages are Debian's own, resolved by apt itself against
# what the image has installed. apt runs in a directory of its own (its lists, its cache
# and a dpkg status made from the image's package list with the mirror's records of those
# very versions), so the host's own apt state is neither read nor changed.
#
# Host packages: apt, apt-utils (apt-ftparchive), python3, debian-archive-keyring;
# scripts/setup-host.sh installs them.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: run as root (it writes the test cache)" >&2
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
image_dir=${1:-}
cache_dir=${2:-/var/cache/lab-test}
mirror=${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${LAB_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
name=debian-12-repo

# What the steps of profiles/debian-stack.toml install (apt-get install
# --no-install-recommends): every VM's qemu-guest-agent, db's postgresql, app's python3 and
# python3-psycopg2, web's nginx and curl (the readiness probe's).
packages=(qemu-guest-agent postgresql python3 python3-psycopg2 nginx curl)

log() { echo "debian-repo: $*" >&2; }
. "$here/debian-cache.sh"

if [ -z "$image_dir" ]; then
    image_dir=$(dirname "$("$here/debian-image.sh" "$cache_dir")")
fi
installed="$image_dir/packages.txt"
[ -f "$installed" ] || { log "$installed: no such file (the image's package list)"; exit 1; }

hash=$({ cat "$0"; echo "$mirror $security_mirror ${packages[*]}"; cat "$installed"; } |
    sha256sum | cut -c1-16)
dir="$cache_dir/$name-$hash"

if [ -f "$dir/Release" ]; then
    echo "$dir"
    exit 0
fi

for tool in apt-get apt-ftparchive python3 gzip; do
    command -v "$tool" >/dev/null ||
        { log "$tool is missing: scripts/setup-host.sh installs it"; exit 1; }
done
[ -f "$keyring" ] || { log "$keyring is missing: install debian-archive-keyring"; exit 1; }

# --- one build at a time per recipe ----------------------------------------------------
lock_recipe "$cache_dir" "$name" "$hash"
if [ -f "$dir/Release" ]; then
    echo "$dir"   # built by another run while this one waited
    exit 0
fi

work=$(mktemp -d "$cache_dir/.build-$name-$hash.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
start=$(date +%s)


# --- apt in a directory of its own -----------------------------------------------------
root="$work/apt"
mkdir -p "$root/etc/apt/apt.conf.d" "$root/etc/apt/preferences.d" \
    "$root/etc/apt/sources.list.d" "$root/var/lib/apt/lists/partial" \
    "$root/var/cache/apt/archives/partial" "$root/var/lib/dpkg"
cat >"$root/etc/apt/sources.list" <<EOF
deb [signed-by=$keyring] $mirror bookworm main
deb [signed-by=$keyring] $mirror bookworm-updates main
deb [signed-by=$keyring] $security_mirror bookworm-security main
EOF
: >"$root/var/lib/dpkg/status"
# Lists uncompressed (a host may say otherwise: Docker's images do), read below; root as
# apt's download user, as the build directory is root's alone.
apt_opts=(
    -o "Dir=$root" -o "Dir::State::status=$root/var/lib/dpkg/status"
    -o APT::Architecture=amd64 -o APT::Architectures=amd64
    -o Acquire::GzipIndexes=false -o Acquire::Languages=none -o Acquire::Retries=5
    -o APT::Sandbox::User=root -o Debug::NoLocking=1
)
log "apt-get update against $mirror"
retry apt-get "${apt_opts[@]}" -qq update >&2

# --- the image's dpkg status -----------------------------------------------------------
# Each installed package as the mirror describes that version (its dependencies and what
# it provides), marked installed; a version the mirror no longer has takes the record of
# the one it has, at the installed version.
python3 - "$installed" "$root/var/lib/apt/lists" >"$root/var/lib/dpkg/status" <<'PY'
import glob, sys

installed = [l.split() for l in open(sys.argv[1]) if l.strip()]
exact, latest = {}, {}
for path in sorted(glob.glob(sys.argv[2] + "/*_Packages")):
    for stanza in open(path, encoding="utf-8").read().split("\n\n"):
        fields = dict(
            l.split(": ", 1) for l in stanza.splitlines() if ": " in l and not l[0].isspace()
        )
        if "Package" in fields:
            exact[(fields["Package"], fields["Version"])] = stanza.strip("\n")
            latest[fields["Package"]] = stanza.strip("\n")
missing = []
for pkg, ver in installed:
    stanza = exact.get((pkg, ver))
    if stanza is None:
        if pkg not in latest:
            missing.append(pkg)
            continue
        stanza = "\n".join(
            f"Version: {ver}" if l.startswith("Version: ") else l
            for l in latest[pkg].splitlines()
        )
    lines = stanza.splitlines()
    print("\n".join(lines[:1] + ["Status: install ok installed"] + lines[1:]))
    print()
if missing:
    sys.exit(f"installed packages the mirror does not know: {' '.join(missing)}")
PY

# --- what the steps need, fetched --------------------------------------------------------
log "resolving ${packages[*]} against the image's $(wc -l <"$installed") packages"
retry apt-get "${apt_opts[@]}" -qq -y --no-install-recommends --download-only \
    install "${packages[@]}" >&2
repo="$work/repo"
mkdir -p "$repo"
mv "$root"/var/cache/apt/archives/*.deb "$repo/"
(
    cd "$repo"
    for deb in *.deb; do
        dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb"
    done | sort >packages.txt
    apt-ftparchive packages . >Packages 2>/dev/null
    gzip -9nk Packages
    apt-ftparchive release . >Release.tmp
    mv Release.tmp Release   # last: its presence marks a finished repository
)
rm -rf "$dir"
mv "$repo" "$dir"
log "built in $(($(date +%s) - start)) s: $(wc -l <"$dir/packages.txt") packages, $(du -sh "$dir" | cut -f1) ($dir)"
echo "$dir"
