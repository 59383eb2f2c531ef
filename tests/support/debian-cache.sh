# Sourced by tests/support/debian-image.sh and debian-repo.sh, after each defines `log`:
# what both need around a build cached in the test cache. It holds nothing of what they
# build (their hashes are of their own text), only how they fetch and wait.

# A command that reaches a Debian mirror, tried again when it fails: the mirrors have not
# answered once before, and come back.
retry() {
    local n
    for n in 1 2 3 4 5; do
        "$@" && return 0
        log "attempt $n of '$*' failed; trying again in $((n * 10)) s"
        sleep $((n * 10))
    done
    "$@"
}

# One build at a time per recipe: `lock_recipe CACHE_DIR NAME HASH` holds a lock on fd 9
# until the script exits; the caller then looks again for what another run built meanwhile.
lock_recipe() {
    mkdir -p "$1"
    exec 9>"$1/.$2-$3.lock"
    flock 9
}
