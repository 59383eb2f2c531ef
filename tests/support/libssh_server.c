/*
 * A small SSH server on libssh (Debian's libssh-4, the library libvirt itself links),
 * for the smoke VMs of the tests on a host without dropbear. lab starts it the way it
 * starts dropbear, so it takes dropbear's options:
 *
 *   libssh-server [-R] [-s] [-F] [-E] [-P PIDFILE] [-p PORT] [-A AUTHORIZED_KEYS]
 *
 * -R and -s are dropbear's "make host keys when missing" and "no password logins": this
 * server makes an Ed25519 host key in /etc/dropbear/ when there is none, and only ever
 * accepts the public keys in /root/.ssh/authorized_keys. -F stays in the foreground, -E
 * is accepted (it logs to stderr anyway); -A names another authorized_keys file. Each
 * connection is served by a child process: public-key authentication, then session
 * channels whose "exec" (or "shell") runs through /bin/sh -c with stdin, stdout, stderr
 * and the exit status carried over the channel.
 * A terminal, when the client asks for one, is a pseudo-terminal (forkpty).
 *
 * The libssh development headers are not on every host, so the few declarations this
 * needs are written here; the enum values are libssh's public ABI.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct ssh_session_struct *ssh_session;
typedef struct ssh_bind_struct *ssh_bind;
typedef struct ssh_message_struct *ssh_message;
typedef struct ssh_channel_struct *ssh_channel;
typedef struct ssh_key_struct *ssh_key;
typedef struct ssh_event_struct *ssh_event;

ssh_bind ssh_bind_new(void);
int ssh_bind_options_set(ssh_bind, int option, const void *value);
int ssh_bind_listen(ssh_bind);
int ssh_bind_accept(ssh_bind, ssh_session);
void ssh_bind_free(ssh_bind);
ssh_session ssh_new(void);
void ssh_free(ssh_session);
void ssh_disconnect(ssh_session);
int ssh_handle_key_exchange(ssh_session);
const char *ssh_get_error(void *);
int ssh_get_fd(ssh_session);
int ssh_get_status(ssh_session);
ssh_message ssh_message_get(ssh_session);
int ssh_message_type(ssh_message);
int ssh_message_subtype(ssh_message);
int ssh_message_reply_default(ssh_message);
void ssh_message_free(ssh_message);
ssh_key ssh_message_auth_pubkey(ssh_message);
int ssh_message_auth_publickey_state(ssh_message);
int ssh_message_auth_reply_pk_ok_simple(ssh_message);
int ssh_message_auth_reply_success(ssh_message, int partial);
int ssh_message_auth_set_methods(ssh_message, int methods);
ssh_channel ssh_message_channel_request_open_reply_accept(ssh_message);
ssh_channel ssh_message_channel_request_channel(ssh_message);
int ssh_message_channel_request_reply_success(ssh_message);
const char *ssh_message_channel_request_command(ssh_message);
const char *ssh_message_channel_request_pty_term(ssh_message);
int ssh_message_channel_request_pty_width(ssh_message);
int ssh_message_channel_request_pty_height(ssh_message);
void ssh_set_message_callback(ssh_session,
                              int (*cb)(ssh_session, ssh_message, void *), void *);
int ssh_channel_read_nonblocking(ssh_channel, void *dest, uint32_t count, int is_stderr);
int ssh_channel_write(ssh_channel, const void *data, uint32_t len);
int ssh_channel_write_stderr(ssh_channel, const void *data, uint32_t len);
int ssh_channel_is_eof(ssh_channel);
int ssh_channel_is_open(ssh_channel);
int ssh_channel_send_eof(ssh_channel);
int ssh_channel_request_send_exit_status(ssh_channel, int status);
int ssh_channel_request_send_exit_signal(ssh_channel, const char *sig, int core,
                                         const char *errmsg, const char *lang);
int ssh_channel_close(ssh_channel);
int ssh_key_type_from_name(const char *name);
int ssh_pki_generate(int type, int parameter, ssh_key *key);
int ssh_pki_export_privkey_file(const ssh_key, const char *passphrase, void *auth_fn,
                                void *auth_data, const char *filename);
int ssh_pki_import_pubkey_base64(const char *b64, int type, ssh_key *key);
int ssh_key_cmp(const ssh_key, const ssh_key, int what);
void ssh_key_free(ssh_key);
int ssh_blocking_flush(ssh_session, int timeout_ms);
ssh_event ssh_event_new(void);
int ssh_event_add_session(ssh_event, ssh_session);
int ssh_event_dopoll(ssh_event, int timeout_ms);

enum { SSH_OK = 0, SSH_ERROR = -1, SSH_AGAIN = -2, SSH_EOF = -127 };
enum { SSH_CLOSED = 0x01, SSH_CLOSED_ERROR = 0x04 };
enum { BIND_BINDADDR = 0, BIND_BINDPORT = 1, BIND_HOSTKEY = 3 };
enum { REQUEST_AUTH = 1, REQUEST_CHANNEL_OPEN, REQUEST_CHANNEL, REQUEST_SERVICE };
enum { CHANNEL_SESSION = 1 };
enum { CHANNEL_REQUEST_PTY = 1, CHANNEL_REQUEST_EXEC, CHANNEL_REQUEST_SHELL,
       CHANNEL_REQUEST_ENV };
enum { AUTH_METHOD_PUBLICKEY = 0x0004 };
enum { PUBLICKEY_STATE_NONE = 0, PUBLICKEY_STATE_VALID = 1 };
enum { KEYCMP_PUBLIC = 0 };

#define HOST_KEY "/etc/dropbear/libssh_host_ed25519_key"
static const char *authorized_keys = "/root/.ssh/authorized_keys";

static void die(const char *what, const char *why)
{
    fprintf(stderr, "libssh-server: %s: %s\n", what, why);
    exit(1);
}

/* Is `key` one of the keys in root's authorized_keys? */
static int authorized(ssh_key key)
{
    FILE *f = fopen(authorized_keys, "r");
    char line[16384];
    int found = 0;
    if (f == NULL)
        return 0;
    while (!found && fgets(line, sizeof line, f)) {
        char *save = NULL;
        char *type = strtok_r(line, " \t\r\n", &save);
        char *b64 = strtok_r(NULL, " \t\r\n", &save);
        ssh_key known = NULL;
        if (type == NULL || b64 == NULL || type[0] == '#')
            continue;
        if (ssh_pki_import_pubkey_base64(b64, ssh_key_type_from_name(type), &known) != SSH_OK)
            continue;
        found = ssh_key_cmp(key, known, KEYCMP_PUBLIC) == 0;
        ssh_key_free(known);
    }
    fclose(f);
    return found;
}

/* Requests that come while a command runs (the client's keepalives, say): the default
 * answer, which for a global request with want-reply is a failure reply. */
static int reply_default(ssh_session session, ssh_message msg, void *data)
{
    (void)session;
    (void)data;
    (void)msg;
    return 1;
}

/* Has the client closed the channel or gone away? */
static int gone(ssh_session session, ssh_channel chan)
{
    return !ssh_channel_is_open(chan)
           || (ssh_get_status(session) & (SSH_CLOSED | SSH_CLOSED_ERROR));
}

static void set_nonblocking(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* The child's side: root's environment, then the command (NULL: a login shell). */
static void exec_command(const char *command, const char *term)
{
    signal(SIGPIPE, SIG_DFL);
    setenv("HOME", "/root", 1);
    setenv("USER", "root", 1);
    setenv("LOGNAME", "root", 1);
    setenv("SHELL", "/bin/sh", 1);
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    if (term)
        setenv("TERM", term, 1);
    if (chdir("/root") != 0 && chdir("/") != 0)
        _exit(127);
    if (command)
        execl("/bin/sh", "sh", "-c", command, (char *)NULL);
    else
        execl("/bin/sh", "-sh", (char *)NULL);
    _exit(127);
}

/* Run `command` (NULL: a shell) for the channel, on a terminal when the client asked for
 * one (`term` set), and carry its streams and its end. */
static void run(ssh_session session, ssh_channel chan, const char *command, const char *term,
                struct winsize *size)
{
    int to_child, from_out, from_err = -1;
    pid_t pid;
    int out_open = 1, err_open = 0, in_open = 1, status = 0;
    char buf[32768];
    ssh_event events;

    if (term) {
        /* One terminal for stdin, stdout and stderr: the master side carries them all. */
        int master;
        pid = forkpty(&master, NULL, NULL, size);
        if (pid < 0)
            die("forkpty", strerror(errno));
        if (pid == 0)
            exec_command(command, term);
        to_child = from_out = master;
    } else {
        int in[2], out[2], err[2];
        if (pipe(in) || pipe(out) || pipe(err))
            die("pipe", strerror(errno));
        pid = fork();
        if (pid < 0)
            die("fork", strerror(errno));
        if (pid == 0) {
            setsid();
            dup2(in[0], 0);
            dup2(out[1], 1);
            dup2(err[1], 2);
            close(in[0]); close(in[1]); close(out[0]); close(out[1]);
            close(err[0]); close(err[1]);
            exec_command(command, NULL);
        }
        close(in[0]);
        close(out[1]);
        close(err[1]);
        to_child = in[1];
        from_out = out[0];
        from_err = err[0];
        err_open = 1;
        set_nonblocking(from_err);
    }
    set_nonblocking(from_out);
    ssh_set_message_callback(session, reply_default, NULL);
    /* Packets are taken in by the event loop: a channel read alone stops reading the
     * socket once the client has sent its EOF, and would miss keepalives and a client
     * that went away. */
    events = ssh_event_new();
    ssh_event_add_session(events, session);

    while (out_open || err_open) {
        struct pollfd fds[3] = {
            {.fd = out_open ? from_out : -1, .events = POLLIN},
            {.fd = err_open ? from_err : -1, .events = POLLIN},
            {.fd = ssh_get_fd(session), .events = POLLIN},
        };
        int n;
        poll(fds, 3, 50);
        /* From the client to the command's stdin. */
        n = ssh_event_dopoll(events, 0) == SSH_ERROR
                ? SSH_ERROR
                : ssh_channel_read_nonblocking(chan, buf, sizeof buf, 0);
        if (n == SSH_ERROR || gone(session, chan)) {
            /* The client went away: so does the command. */
            kill(-pid, SIGHUP);
            kill(-pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return;
        }
        if (n > 0 && in_open) {
            const char *p = buf;
            while (n > 0) {
                ssize_t w = write(to_child, p, n);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w < 0) { /* the command closed its stdin: drop the rest */
                    if (!term)
                        close(to_child);
                    in_open = 0;
                    break;
                }
                p += w;
                n -= w;
            }
        }
        if (in_open && !term && ssh_channel_is_eof(chan)) {
            close(to_child);
            in_open = 0;
        }
        /* From the command to the client. */
        for (int i = 0; i < 2; i++) {
            int *open = i == 0 ? &out_open : &err_open;
            int fd = i == 0 ? from_out : from_err;
            ssize_t r;
            if (!*open)
                continue;
            r = read(fd, buf, sizeof buf);
            if (r > 0) {
                int w = i == 0 ? ssh_channel_write(chan, buf, r)
                               : ssh_channel_write_stderr(chan, buf, r);
                if (w == SSH_ERROR) {
                    kill(-pid, SIGKILL);
                    waitpid(pid, NULL, 0);
                    return;
                }
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                /* End of output (a terminal says EIO once the command is gone). */
                close(fd);
                *open = 0;
            }
        }
    }
    if (in_open && !term)
        close(to_child);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status)) {
        ssh_channel_request_send_exit_status(chan, WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        const char *name = sigabbrev_np(WTERMSIG(status));
        ssh_channel_request_send_exit_signal(chan, name ? name : "KILL", 0, "", "");
    }
    ssh_channel_send_eof(chan);
    ssh_channel_close(chan);
    ssh_blocking_flush(session, 5000);
    /* Wait (up to 5 s) for the client's own close, so it sees an orderly end. */
    for (int i = 0; i < 100 && !(ssh_get_status(session) & (SSH_CLOSED | SSH_CLOSED_ERROR)); i++) {
        struct pollfd fd = {.fd = ssh_get_fd(session), .events = POLLIN};
        poll(&fd, 1, 50);
        if (ssh_event_dopoll(events, 0) == SSH_ERROR)
            break;
    }
}

/* One connection: key exchange, public-key authentication, then one session channel. */
static void serve(ssh_session session)
{
    ssh_message msg;
    ssh_channel chan = NULL;
    int authenticated = 0;
    char *term = NULL;
    struct winsize size = {.ws_row = 24, .ws_col = 80};

    if (ssh_handle_key_exchange(session) != SSH_OK) {
        fprintf(stderr, "libssh-server: key exchange: %s\n", ssh_get_error(session));
        return;
    }
    while ((msg = ssh_message_get(session)) != NULL) {
        int type = ssh_message_type(msg), subtype = ssh_message_subtype(msg);
        if (type == REQUEST_AUTH && subtype == AUTH_METHOD_PUBLICKEY) {
            ssh_key key = ssh_message_auth_pubkey(msg);
            int state = ssh_message_auth_publickey_state(msg);
            if (key && authorized(key)) {
                if (state == PUBLICKEY_STATE_NONE) {
                    ssh_message_auth_reply_pk_ok_simple(msg);
                } else if (state == PUBLICKEY_STATE_VALID) {
                    ssh_message_auth_reply_success(msg, 0);
                    authenticated = 1;
                } else {
                    ssh_message_auth_set_methods(msg, AUTH_METHOD_PUBLICKEY);
                    ssh_message_reply_default(msg);
                }
            } else {
                ssh_message_auth_set_methods(msg, AUTH_METHOD_PUBLICKEY);
                ssh_message_reply_default(msg);
            }
        } else if (type == REQUEST_AUTH) {
            ssh_message_auth_set_methods(msg, AUTH_METHOD_PUBLICKEY);
            ssh_message_reply_default(msg);
        } else if (authenticated && type == REQUEST_CHANNEL_OPEN && subtype == CHANNEL_SESSION
                   && chan == NULL) {
            chan = ssh_message_channel_request_open_reply_accept(msg);
        } else if (authenticated && type == REQUEST_CHANNEL && chan != NULL
                   && subtype == CHANNEL_REQUEST_ENV) {
            ssh_message_channel_request_reply_success(msg);
        } else if (authenticated && type == REQUEST_CHANNEL && chan != NULL
                   && subtype == CHANNEL_REQUEST_PTY) {
            const char *t = ssh_message_channel_request_pty_term(msg);
            int cols = ssh_message_channel_request_pty_width(msg);
            int rows = ssh_message_channel_request_pty_height(msg);
            free(term);
            term = strdup(t && *t ? t : "vt100");
            if (cols > 0 && rows > 0) {
                size.ws_col = (unsigned short)cols;
                size.ws_row = (unsigned short)rows;
            }
            ssh_message_channel_request_reply_success(msg);
        } else if (authenticated && type == REQUEST_CHANNEL && chan != NULL
                   && (subtype == CHANNEL_REQUEST_EXEC || subtype == CHANNEL_REQUEST_SHELL)) {
            char *command = NULL;
            if (subtype == CHANNEL_REQUEST_EXEC) {
                const char *c = ssh_message_channel_request_command(msg);
                command = strdup(c ? c : "");
            }
            ssh_message_channel_request_reply_success(msg);
            ssh_message_free(msg);
            run(session, chan, command, term, &size);
            free(command);
            free(term);
            return;
        } else {
            ssh_message_reply_default(msg);
        }
        ssh_message_free(msg);
    }
}

int main(int argc, char **argv)
{
    const char *pidfile = NULL;
    unsigned int port = 22;
    int foreground = 0, opt;
    ssh_key host = NULL;
    ssh_bind bind;

    while ((opt = getopt(argc, argv, "RsFEP:p:A:")) != -1) {
        switch (opt) {
        case 'R': case 's': case 'E': break;
        case 'F': foreground = 1; break;
        case 'P': pidfile = optarg; break;
        case 'p': port = (unsigned int)atoi(optarg); break;
        case 'A': authorized_keys = optarg; break;
        default:
            fprintf(stderr, "usage: %s [-R] [-s] [-F] [-E] [-P PIDFILE] [-p PORT] [-A AUTHORIZED_KEYS]\n", argv[0]);
            return 2;
        }
    }
    /* The host key is made once, where dropbear keeps its own: a restarted VM shows the
     * same one. */
    if (access(HOST_KEY, R_OK) != 0) {
        mode_t old = umask(077);
        if (ssh_pki_generate(ssh_key_type_from_name("ssh-ed25519"), 0, &host) != SSH_OK)
            die("making the host key", "ssh_pki_generate failed");
        if (ssh_pki_export_privkey_file(host, NULL, NULL, NULL, HOST_KEY) != SSH_OK)
            die("writing the host key", HOST_KEY);
        umask(old);
        /* On the disk now: a VM powered off hard keeps the key its clients pinned. */
        sync();
    }
    bind = ssh_bind_new();
    if (ssh_bind_options_set(bind, BIND_HOSTKEY, HOST_KEY) != SSH_OK
        || ssh_bind_options_set(bind, BIND_BINDPORT, &port) != SSH_OK)
        die("options", ssh_get_error(bind));
    if (ssh_bind_listen(bind) != SSH_OK)
        die("listening", ssh_get_error(bind));
    if (!foreground) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork", strerror(errno));
        if (pid > 0)
            return 0;
        setsid();
    }
    if (pidfile) {
        FILE *f = fopen(pidfile, "w");
        if (f) {
            fprintf(f, "%d\n", (int)getpid());
            fclose(f);
        }
    }
    signal(SIGCHLD, SIG_IGN); /* connection processes are reaped by the kernel */
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        ssh_session session = ssh_new();
        pid_t pid;
        if (ssh_bind_accept(bind, session) != SSH_OK) {
            fprintf(stderr, "libssh-server: accept: %s\n", ssh_get_error(bind));
            ssh_free(session);
            continue;
        }
        pid = fork();
        if (pid == 0) {
            signal(SIGCHLD, SIG_DFL);
            ssh_bind_free(bind);
            serve(session);
            ssh_disconnect(session);
            ssh_free(session);
            _exit(0);
        }
        ssh_free(session);
    }
}
