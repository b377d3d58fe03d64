/*
 * converge-spawn: start a program straight inside a cgroup v2, a new session of its own,
 * as a child of whoever started this helper.
 *
 *   converge-spawn REPORT_FD CGROUP_DIR -- PROGRAM [ARG...]
 *
 * The program is created inside CGROUP_DIR by clone3(CLONE_INTO_CGROUP): it runs there from
 * its first instruction without moving between cgroups (a move, e.g. `echo 0 > cgroup.procs`,
 * waits for an RCU grace period of the kernel's cgroup lock: ~7-15 ms after an idle spell).
 * CLONE_PARENT makes it the child of this helper's parent (the converge controller reaps it
 * and sees its exit code; its exit signal is this helper's own, SIGCHLD when started by
 * fork / vfork / posix_spawn); it calls setsid() and execve()s PROGRAM with the argv given here
 * (untouched: no shell), the environment, working folder and descriptors this helper got.
 * PROGRAM without a slash is looked for along $PATH (empty entries: the working folder) as
 * Python's subprocess does; the first error other than ENOENT / ENOTDIR is the one reported.
 *
 * One line is written to REPORT_FD (which the program never inherits), then this helper exits:
 *   "ok 0 PID"            the program runs (exit status 0)
 *   "exec ERRNO PID"      setsid or execve failed with ERRNO; PID is a zombie child of the
 *                         caller to reap (exit status 1)
 *   "clone ERRNO"         no process was made: clone3 / CLONE_INTO_CGROUP cannot be used here
 *                         (ENOSYS, EINVAL: an old kernel; EBADF: not a cgroup2 folder;
 *                         EOPNOTSUPP: a threaded cgroup ...), or the cgroup could not be
 *                         opened (exit status 2)
 *   "usage ERRNO"         bad arguments (exit status 2; a line on stderr says which)
 *
 * Between clone3 and execve the child makes only async-signal-safe calls (setsid, execve,
 * write, _exit). The helper touches nothing but what it is given: the report descriptor, the
 * cgroup folder (opened O_DIRECTORY | O_NOFOLLOW, checked to be on cgroup2) and the program.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef CLONE_PARENT
#define CLONE_PARENT 0x00008000
#endif
#define INTO_CGROUP 0x200000000ULL /* CLONE_INTO_CGROUP, Linux >= 5.7 */
#define CGROUP2_MAGIC 0x63677270

extern char **environ;

struct clone_args_v2 { /* struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2) */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    uint64_t set_tid, set_tid_size, cgroup;
};

static int report_fd = -1;

static void report(const char *what, int err, long pid) {
    char line[64];
    int n = pid > 0 ? snprintf(line, sizeof line, "%s %d %ld\n", what, err, pid)
                    : snprintf(line, sizeof line, "%s %d\n", what, err);
    if (report_fd >= 0 && n > 0) {
        ssize_t done;
        do done = write(report_fd, line, (size_t)n); while (done < 0 && errno == EINTR);
    }
}

static int usage(const char *why) {
    fprintf(stderr, "converge-spawn: %s\nusage: converge-spawn REPORT_FD CGROUP_DIR -- PROGRAM [ARG...]\n", why);
    report("usage", EINVAL, 0);
    return 2;
}

static int parse_fd(const char *s) {
    if (!*s || strlen(s) > 7) return -1;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    return v >= 3 && v < INT_MAX ? (int)v : -1;
}

/* An absolute path without "." or ".." components, shorter than PATH_MAX. */
static int plain_absolute(const char *p) {
    if (p[0] != '/' || strlen(p) >= PATH_MAX) return 0;
    for (const char *c = p; *c; ) {
        while (*c == '/') c++;
        size_t len = strcspn(c, "/");
        if ((len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.')) return 0;
        c += len;
    }
    return 1;
}

/* Where execve is tried, in order: PROGRAM itself if it has a slash, else each $PATH entry
 * joined with it. Built before the clone: the child only loops over it. */
static char **candidates(const char *prog) {
    if (strchr(prog, '/')) {
        char **out = calloc(2, sizeof *out);
        if (out) out[0] = (char *)prog;
        return out;
    }
    const char *path = getenv("PATH");
    if (!path) path = "/bin:/usr/bin"; /* Python's os.defpath, as subprocess uses */
    size_t n = 2;
    for (const char *p = path; *p; p++) n += *p == ':';
    char **out = calloc(n, sizeof *out);
    if (!out) return NULL;
    size_t i = 0, plen = strlen(prog);
    for (const char *start = path;; ) {
        const char *end = strchrnul(start, ':');
        size_t dlen = (size_t)(end - start);
        char *c = malloc(dlen + plen + 2);
        if (!c) return NULL;
        if (dlen) {
            memcpy(c, start, dlen);
            c[dlen] = '/';
            memcpy(c + dlen + 1, prog, plen + 1);
        } else {
            memcpy(c, prog, plen + 1); /* empty entry: the working folder */
        }
        out[i++] = c;
        if (!*end) break;
        start = end + 1;
    }
    return out;
}

int main(int argc, char **argv) {
    if (argc < 5) return usage("too few arguments");
    int fd = parse_fd(argv[1]);
    if (fd < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) return usage("REPORT_FD is not an open descriptor >= 3");
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode)) return usage("REPORT_FD is not a pipe");
    report_fd = fd;
    const char *dir = argv[2];
    if (!plain_absolute(dir)) return usage("CGROUP_DIR is not a plain absolute path");
    if (strcmp(argv[3], "--") != 0) return usage("no -- before PROGRAM");
    if (!argv[4][0]) return usage("PROGRAM is empty");
    char **prog_argv = argv + 4;

    int cg = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (cg < 0) { report("clone", errno, 0); return 2; }
    struct statfs sf;
    if (fstatfs(cg, &sf) < 0 || sf.f_type != CGROUP2_MAGIC) { report("clone", EBADF, 0); return 2; }

    char **tries = candidates(prog_argv[0]);
    if (!tries) { report("clone", ENOMEM, 0); return 2; }
    int pipefd[2]; /* the child's errors; closed by a successful execve */
    if (pipe2(pipefd, O_CLOEXEC) < 0) { report("clone", errno, 0); return 2; }

    struct clone_args_v2 args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_PARENT | INTO_CGROUP;
    args.exit_signal = 0; /* with CLONE_PARENT the kernel takes this helper's own (SIGCHLD) */
    args.cgroup = (uint64_t)cg;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) { report("clone", errno, 0); return 2; }
    if (pid == 0) { /* the child: async-signal-safe calls only from here on */
        int err[2] = {1, 0};
        if (setsid() < 0) {
            err[1] = errno;
        } else {
            err[0] = 2;
            for (char **t = tries; *t; t++) {
                execve(*t, prog_argv, environ);
                if (errno != ENOENT && errno != ENOTDIR && err[1] == 0) err[1] = errno;
            }
            if (err[1] == 0) err[1] = errno;
        }
        ssize_t done;
        do done = write(pipefd[1], err, sizeof err); while (done < 0 && errno == EINTR);
        _exit(127);
    }
    close(pipefd[1]);
    int err[2] = {0, 0};
    ssize_t got;
    do got = read(pipefd[0], err, sizeof err); while (got < 0 && errno == EINTR);
    if (got <= 0) { /* closed by execve: the program runs (a failed read: its exit code will tell) */
        report("ok", 0, pid);
        return 0;
    }
    report("exec", err[1] ? err[1] : EIO, pid);
    return 1;
}
