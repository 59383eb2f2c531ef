/*
 * A small QEMU guest agent for the smoke VMs of the tests on a host without
 * qemu-guest-agent (qemu-ga). lab starts it the way it starts qemu-ga:
 *
 *   guest-agent [-d|--daemonize] [-m virtio-serial] -p PORT [-f PIDFILE] [-t DIR] [-l LOG]
 *
 * It speaks the guest agent protocol (JSON commands from the host on the virtio serial
 * port, one JSON answer each) for the commands lab and its tests send, and does what
 * qemu-ga does for them:
 *
 *   guest-sync, guest-sync-delimited, guest-ping, guest-info
 *   guest-fstrim        the FITRIM ioctl on every mounted ext2/3/4, xfs, btrfs and vfat
 *                       filesystem, as qemu-ga does: the guest's kernel sends the discards
 *                       down the virtual disk
 *   guest-exec          /bin/sh (or any program) with its arguments; output captured
 *   guest-exec-status   exit code and base64 output once it has ended
 *   guest-shutdown      sync, then power off (no answer, as qemu-ga)
 *
 * Anything else is answered with a CommandNotFound error, as qemu-ga does for a command
 * it does not have. The JSON reader knows the shapes those commands take and no more.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <linux/fs.h>
#include <mntent.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static int port = -1;
static const char *state_dir = "/run";

static void die(const char *what)
{
    fprintf(stderr, "guest-agent: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ---- answers ------------------------------------------------------------------------ */

struct out {
    char *buf;
    size_t len, cap;
};

static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        size_t room = o->cap - o->len;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf ? o->buf + o->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < room) {
            o->len += (size_t)n;
            return;
        }
        o->cap = o->cap * 2 + (size_t)n + 64;
        o->buf = realloc(o->buf, o->cap);
        if (!o->buf)
            die("realloc");
    }
}

static void put_string(struct out *o, const char *s)
{
    put(o, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            put(o, "\\%c", c);
        else if (c < 0x20)
            put(o, "\\u%04x", c);
        else
            put(o, "%c", c);
    }
    put(o, "\"");
}

static void put_base64(struct out *o, const unsigned char *data, size_t len)
{
    static const char digits[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    put(o, "\"");
    for (size_t i = 0; i < len; i += 3) {
        uint32_t n = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            n |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len)
            n |= data[i + 2];
        put(o, "%c%c%c%c", digits[n >> 18 & 63], digits[n >> 12 & 63],
            i + 1 < len ? digits[n >> 6 & 63] : '=', i + 2 < len ? digits[n & 63] : '=');
    }
    put(o, "\"");
}

static void send_out(struct out *o)
{
    put(o, "\n");
    size_t done = 0;
    while (done < o->len) {
        ssize_t n = write(port, o->buf + done, o->len - done);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                usleep(10000);
                continue;
            }
            break; /* the host went away: the answer is lost, as with qemu-ga */
        }
        done += (size_t)n;
    }
    free(o->buf);
}

static void answer_error(const char *class, const char *desc)
{
    struct out o = {0};
    put(&o, "{\"error\": {\"class\": ");
    put_string(&o, class);
    put(&o, ", \"desc\": ");
    put_string(&o, desc);
    put(&o, "}}");
    send_out(&o);
}

/* ---- the little JSON a command is ---------------------------------------------------- */

/* The value of "key" in the object text `msg` (first occurrence), or NULL. */
static const char *value_of(const char *msg, const char *key)
{
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    const char *p = strstr(msg, quoted);
    if (!p)
        return NULL;
    p += strlen(quoted);
    while (isspace((unsigned char)*p))
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (isspace((unsigned char)*p))
        p++;
    return p;
}

/* A JSON string at p (at its opening quote), unescaped into a new buffer; *end after it. */
static char *read_string(const char *p, const char **end)
{
    if (*p != '"')
        return NULL;
    p++;
    char *s = malloc(strlen(p) + 1), *w = s;
    if (!s)
        die("malloc");
    while (*p && *p != '"') {
        if (*p == '\\' && p[1]) {
            p++;
            switch (*p) {
            case 'n': *w++ = '\n'; break;
            case 't': *w++ = '\t'; break;
            case 'r': *w++ = '\r'; break;
            case 'b': *w++ = '\b'; break;
            case 'f': *w++ = '\f'; break;
            case 'u': {
                unsigned v = 0;
                if (sscanf(p + 1, "%4x", &v) == 1)
                    p += 4;
                if (v < 0x80) {
                    *w++ = (char)v;
                } else if (v < 0x800) {
                    *w++ = (char)(0xc0 | v >> 6);
                    *w++ = (char)(0x80 | (v & 63));
                } else {
                    *w++ = (char)(0xe0 | v >> 12);
                    *w++ = (char)(0x80 | (v >> 6 & 63));
                    *w++ = (char)(0x80 | (v & 63));
                }
                break;
            }
            default: *w++ = *p; break;
            }
            p++;
        } else {
            *w++ = *p++;
        }
    }
    *w = 0;
    if (end)
        *end = *p ? p + 1 : p;
    return s;
}

static char *string_of(const char *msg, const char *key)
{
    const char *v = value_of(msg, key);
    return v ? read_string(v, NULL) : NULL;
}

static int number_of(const char *msg, const char *key, long long *n)
{
    const char *v = value_of(msg, key);
    char *end;
    if (!v)
        return 0;
    errno = 0;
    *n = strtoll(v, &end, 10);
    return end != v && errno == 0;
}

static int true_of(const char *msg, const char *key)
{
    const char *v = value_of(msg, key);
    return v && strncmp(v, "true", 4) == 0;
}

/* ---- commands ------------------------------------------------------------------------ */

static void guest_sync(const char *msg, int delimited)
{
    long long id = 0;
    struct out o = {0};
    number_of(msg, "id", &id);
    if (delimited) {
        /* The host drops everything before this byte. */
        put(&o, "%c", 0xff);
    }
    put(&o, "{\"return\": %lld}", id);
    send_out(&o);
}

static const char *const commands[] = {
    "guest-sync", "guest-sync-delimited", "guest-ping", "guest-info", "guest-fstrim",
    "guest-exec", "guest-exec-status", "guest-shutdown",
};

static void guest_info(void)
{
    struct out o = {0};
    put(&o, "{\"return\": {\"version\": \"lab-test-agent\", \"supported_commands\": [");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        put(&o, "%s{\"name\": ", i ? ", " : "");
        put_string(&o, commands[i]);
        put(&o, ", \"enabled\": true, \"success-response\": %s}",
            strcmp(commands[i], "guest-shutdown") ? "true" : "false");
    }
    put(&o, "]}}");
    send_out(&o);
}

static void guest_fstrim(const char *msg)
{
    static const char *const trimmable[] = {"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"};
    long long minimum = 0;
    number_of(msg, "minimum", &minimum);
    FILE *mounts = setmntent("/proc/self/mounts", "r");
    if (!mounts) {
        answer_error("GenericError", "cannot read /proc/self/mounts");
        return;
    }
    struct out o = {0};
    put(&o, "{\"return\": {\"paths\": [");
    int first = 1;
    struct mntent *m;
    while ((m = getmntent(mounts))) {
        int known = 0;
        for (size_t i = 0; i < sizeof trimmable / sizeof *trimmable; i++)
            known |= strcmp(m->mnt_type, trimmable[i]) == 0;
        if (!known)
            continue;
        put(&o, "%s{\"path\": ", first ? "" : ", ");
        first = 0;
        put_string(&o, m->mnt_dir);
        struct fstrim_range range = {.start = 0, .len = ULLONG_MAX,
                                     .minlen = (unsigned long long)minimum};
        int fd = open(m->mnt_dir, O_RDONLY | O_DIRECTORY);
        if (fd < 0 || ioctl(fd, FITRIM, &range) < 0) {
            put(&o, ", \"error\": ");
            put_string(&o, strerror(errno));
        } else {
            put(&o, ", \"trimmed\": %llu, \"minimum\": %lld", range.len, minimum);
        }
        if (fd >= 0)
            close(fd);
        put(&o, "}");
    }
    endmntent(mounts);
    put(&o, "]}}");
    send_out(&o);
}

static void capture_path(char *buf, size_t size, pid_t pid, const char *which)
{
    snprintf(buf, size, "%s/guest-agent-%d.%s", state_dir, (int)pid, which);
}

static void guest_exec(const char *msg)
{
    char *path = string_of(msg, "path");
    if (!path) {
        answer_error("GenericError", "guest-exec: no path");
        return;
    }
    /* The arguments: a JSON array of strings. */
    char *argv[256];
    int argc = 0;
    argv[argc++] = path;
    const char *p = value_of(msg, "arg");
    if (p && *p == '[') {
        p++;
        for (;;) {
            while (isspace((unsigned char)*p) || *p == ',')
                p++;
            if (*p != '"' || argc == 255)
                break;
            argv[argc++] = read_string(p, &p);
        }
    }
    argv[argc] = NULL;
    int capture = true_of(msg, "capture-output");
    int ready[2];
    if (pipe(ready) < 0)
        die("pipe");
    pid_t pid = fork();
    if (pid < 0) {
        answer_error("GenericError", "guest-exec: fork failed");
        return;
    }
    if (pid == 0) {
        /* Wait until the parent knows where output goes (the file names hold our pid). */
        char c;
        close(ready[1]);
        if (read(ready[0], &c, 1) < 0)
            _exit(127);
        close(ready[0]);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        char file[PATH_MAX];
        if (capture) {
            capture_path(file, sizeof file, getpid(), "out");
            int out = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            capture_path(file, sizeof file, getpid(), "err");
            int err = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            dup2(out, 1);
            dup2(err, 2);
        } else {
            dup2(null, 1);
            dup2(null, 2);
        }
        close(port);
        execv(path, argv);
        _exit(127);
    }
    close(ready[0]);
    if (write(ready[1], "x", 1) < 0) {
        /* the child has gone: guest-exec-status says so */
    }
    close(ready[1]);
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    struct out o = {0};
    put(&o, "{\"return\": {\"pid\": %d}}", (int)pid);
    send_out(&o);
}

static void put_file(struct out *o, const char *key, pid_t pid, const char *which)
{
    char file[PATH_MAX];
    capture_path(file, sizeof file, pid, which);
    FILE *f = fopen(file, "r");
    if (!f)
        return;
    unsigned char *data = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap * 2 + 4096;
            data = realloc(data, cap);
            if (!data)
                die("realloc");
        }
        size_t n = fread(data + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    unlink(file);
    if (len) {
        put(o, ", ");
        put_string(o, key);
        put(o, ": ");
        put_base64(o, data, len);
    }
    free(data);
}

static void guest_exec_status(const char *msg)
{
    long long pid = 0;
    if (!number_of(msg, "pid", &pid)) {
        answer_error("GenericError", "guest-exec-status: no pid");
        return;
    }
    int status;
    pid_t r = waitpid((pid_t)pid, &status, WNOHANG);
    if (r < 0) {
        answer_error("GenericError", "Invalid parameter 'pid'");
        return;
    }
    struct out o = {0};
    if (r == 0) {
        put(&o, "{\"return\": {\"exited\": false}}");
    } else {
        put(&o, "{\"return\": {\"exited\": true");
        if (WIFEXITED(status))
            put(&o, ", \"exitcode\": %d", WEXITSTATUS(status));
        else
            put(&o, ", \"signal\": %d", WTERMSIG(status));
        put_file(&o, "out-data", (pid_t)pid, "out");
        put_file(&o, "err-data", (pid_t)pid, "err");
        put(&o, "}}");
    }
    send_out(&o);
}

static void guest_shutdown(const char *msg)
{
    char *mode = string_of(msg, "mode");
    int reboot_it = mode && strcmp(mode, "reboot") == 0;
    free(mode);
    sync();
    reboot(reboot_it ? RB_AUTOBOOT : RB_POWER_OFF);
    answer_error("GenericError", strerror(errno));
}

static void handle(const char *msg)
{
    char *cmd = string_of(msg, "execute");
    if (!cmd) {
        answer_error("GenericError", "no \"execute\" in the command");
        return;
    }
    if (!strcmp(cmd, "guest-sync"))
        guest_sync(msg, 0);
    else if (!strcmp(cmd, "guest-sync-delimited"))
        guest_sync(msg, 1);
    else if (!strcmp(cmd, "guest-ping")) {
        struct out o = {0};
        put(&o, "{\"return\": {}}");
        send_out(&o);
    } else if (!strcmp(cmd, "guest-info"))
        guest_info();
    else if (!strcmp(cmd, "guest-fstrim"))
        guest_fstrim(msg);
    else if (!strcmp(cmd, "guest-exec"))
        guest_exec(msg);
    else if (!strcmp(cmd, "guest-exec-status"))
        guest_exec_status(msg);
    else if (!strcmp(cmd, "guest-shutdown"))
        guest_shutdown(msg);
    else {
        char desc[128];
        snprintf(desc, sizeof desc, "The command %s has not been found", cmd);
        answer_error("CommandNotFound", desc);
    }
    free(cmd);
}

/* ---- the port ------------------------------------------------------------------------ */

/* Read commands for ever: each is one JSON object, told apart by its balanced braces
 * (strings and their escapes skipped). A 0xff byte resets the reader, as in qemu-ga. */
static void serve(void)
{
    static char msg[1 << 20];
    size_t len = 0;
    int depth = 0, in_string = 0, escaped = 0;
    for (;;) {
        struct pollfd pfd = {.fd = port, .events = POLLIN};
        if (poll(&pfd, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (!(pfd.revents & POLLIN)) {
            /* No host on the other end yet (POLLHUP): look again soon. */
            usleep(100000);
            continue;
        }
        char buf[4096];
        ssize_t n = read(port, buf, sizeof buf);
        if (n <= 0) {
            usleep(100000);
            continue;
        }
        for (ssize_t i = 0; i < n; i++) {
            char c = buf[i];
            if ((unsigned char)c == 0xff) {
                len = 0, depth = 0, in_string = 0, escaped = 0;
                continue;
            }
            if (depth == 0 && c != '{')
                continue;
            if (len + 1 < sizeof msg)
                msg[len++] = c;
            if (in_string) {
                if (escaped)
                    escaped = 0;
                else if (c == '\\')
                    escaped = 1;
                else if (c == '"')
                    in_string = 0;
            } else if (c == '"') {
                in_string = 1;
            } else if (c == '{') {
                depth++;
            } else if (c == '}' && --depth == 0) {
                msg[len] = 0;
                handle(msg);
                len = 0;
            }
        }
    }
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"daemonize", no_argument, NULL, 'd'},
        {"method", required_argument, NULL, 'm'},
        {"path", required_argument, NULL, 'p'},
        {"pidfile", required_argument, NULL, 'f'},
        {"statedir", required_argument, NULL, 't'},
        {"logfile", required_argument, NULL, 'l'},
        {0, 0, 0, 0},
    };
    const char *path = NULL, *pidfile = NULL, *logfile = NULL;
    int daemonize = 0, opt;
    while ((opt = getopt_long(argc, argv, "dm:p:f:t:l:", options, NULL)) != -1) {
        switch (opt) {
        case 'd': daemonize = 1; break;
        case 'm':
            if (strcmp(optarg, "virtio-serial") != 0) {
                fprintf(stderr, "guest-agent: only -m virtio-serial\n");
                return 2;
            }
            break;
        case 'p': path = optarg; break;
        case 'f': pidfile = optarg; break;
        case 't': state_dir = optarg; break;
        case 'l': logfile = optarg; break;
        default:
            fprintf(stderr, "usage: %s [-d] [-m virtio-serial] -p PORT [-f PIDFILE] "
                            "[-t STATEDIR] [-l LOGFILE]\n", argv[0]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "guest-agent: -p PORT is needed\n");
        return 2;
    }
    port = open(path, O_RDWR | O_NOCTTY);
    if (port < 0)
        die(path);
    if (daemonize) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid > 0)
            _exit(0);
        setsid();
    }
    if (logfile) {
        int log = open(logfile, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (log >= 0) {
            dup2(log, 2);
            close(log);
        }
    }
    if (pidfile) {
        FILE *f = fopen(pidfile, "w");
        if (!f)
            die(pidfile);
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    signal(SIGPIPE, SIG_IGN);
    serve();
    return 0;
}
