#!/usr/bin/env python3
"""Start daemons under a process that reaps their orphans at once.

Where no systemd runs (containers, CI guests), PID 1 may be slow to reap orphaned
processes: on the development machines it reaps them every 2 seconds. libvirt's
virDomainDestroy waits until the QEMU process it killed is gone, which an unreaped zombie
is not, so every `lab reset` and `lab down` waited up to 2 seconds for PID 1.

This process marks itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), starts each
command given (daemons that fork into the background: `libvirtd -d`), and from then on
reaps every process of theirs that ends: the daemons, once they fork away, and what they
start (QEMU, dnsmasq) are reparented to it, not to PID 1.

usage: subreaper.py PIDFILE -- CMD [ARG...] [-- CMD [ARG...]]...
"""

import ctypes
import os
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main(argv):
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write(__doc__.strip().splitlines()[-1] + "\n")
        return 2
    pidfile = argv[1]
    commands, current = [], []
    for word in argv[3:]:
        if word == "--":
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    if current:
        commands.append(current)

    # A daemon keeps nothing of whoever started it: a descriptor inherited here (a lock
    # the caller's caller holds, say) would stay open, and held, for the daemons' life.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        sys.stderr.write(f"subreaper: prctl: {os.strerror(err)}\n")
        return 1
    with open(pidfile + ".new", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(pidfile + ".new", pidfile)

    failed = 0
    for cmd in commands:
        pid = os.fork()
        if pid == 0:
            try:
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.stderr.write(f"subreaper: {' '.join(cmd)} failed ({status})\n")
            failed += 1
    if failed == len(commands):
        return 1

    # Reap whatever ends, as it ends; with nothing to wait for, look again in a while
    # (a daemon may start new processes at any time).
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)
        except InterruptedError:
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
