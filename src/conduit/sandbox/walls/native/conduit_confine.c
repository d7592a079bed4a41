/*
 * conduit-confine: apply Conduit's OS walls to this process, then become the sandbox runtime.
 *
 * The native twin of conduit/sandbox/walls/confine.py, with the same contract and order of steps; it
 * exists because a sandbox start pays for the launcher every time, and starting a Python
 * interpreter (~12 ms with its imports) costs more than Deno's own start. `make setup` builds it
 * when a C compiler is present; without it Conduit uses the Python launcher.
 *
 * Usage:
 *   conduit-confine [--cgroup PROCS_FILE]... [--cgroup-new PARENT]... [--cpu SECONDS] [--nice N] [--nnp]
 *                   [--ro PATH]... [--rw PATH]... [--landlock] [--uid UID --gid GID]
 *                   [--parent-death] [--clear-env] [--env NAME=VALUE]... -- ARGV...
 *   conduit-confine --protocol      prints the argument protocol version
 *
 * --cgroup-new PARENT makes the leaf PARENT/sandbox-pid-<this pid> and joins it, for processes that
 * are started by someone else before their program is known (Monty's workers: the host finds the
 * leaf by the worker's pid and caps it then).
 *
 * A copy of the launcher under another name (NAME) takes its options from NAME.args, one argument
 * per line, and appends the arguments it is started with to the ARGV there: a command line for
 * programs that start an executable they are given by path, with arguments of their own.
 *
 * Steps, in the only order that works: join the cgroups and set RLIMIT_CPU and niceness while
 * still privileged; then no-new-privileges and Landlock (read-only rules for --ro, read-write for
 * --rw, everything else denied); then drop supplementary groups, gid and uid; then the parent-death
 * signal; then execve. A step that was asked for and fails aborts the launch with exit status 121 and
 * a message on stderr, so a sandbox never runs with fewer walls than the gateway reports.
 *
 * --parent-death sets PR_SET_PDEATHSIG (SIGKILL) after the uid drop (a credential change clears it), so
 * the sandbox dies with the thread that started it, even when its process is SIGKILLed; a parent
 * already gone by then aborts the launch.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PROTOCOL "3"
#define LAUNCH_FAILED 121
#define MAX_ITEMS 256

#define SYS_LANDLOCK_CREATE_RULESET 444
#define SYS_LANDLOCK_ADD_RULE 445
#define SYS_LANDLOCK_RESTRICT_SELF 446
#define LANDLOCK_CREATE_RULESET_VERSION 1u
#define LANDLOCK_RULE_PATH_BENEATH 1

/* Landlock file-system rights, by the ABI version that introduced them. */
#define FS_EXECUTE (1ull << 0)
#define FS_WRITE_FILE (1ull << 1)
#define FS_READ_FILE (1ull << 2)
#define FS_READ_DIR (1ull << 3)
#define FS_REMOVE_DIR (1ull << 4)
#define FS_REMOVE_FILE (1ull << 5)
#define FS_MAKE_DIR (1ull << 7)
#define FS_MAKE_REG (1ull << 8)
#define FS_MAKE_SYM (1ull << 12)
#define FS_REFER (1ull << 13)
#define FS_TRUNCATE (1ull << 14)
#define FS_IOCTL_DEV (1ull << 15)
#define FS_ABI1 ((1ull << 13) - 1)
#define FILE_RIGHTS (FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV)
#define READ_ONLY (FS_EXECUTE | FS_READ_FILE | FS_READ_DIR)
#define READ_WRITE \
    (READ_ONLY | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SYM | FS_TRUNCATE)

struct ruleset_attr {
    uint64_t handled_access_fs;
};

struct path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "conduit-confine: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(LAUNCH_FAILED);
}

static long parse_number(const char *text, const char *option) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0') fail("not a number", option);
    return value;
}

static void join_cgroup(const char *procs_file) {
    int fd = open(procs_file, O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail("joining cgroup", strerror(errno));
    char pid[32];
    int length = snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (write(fd, pid, (size_t)length) != length) {
        int saved = errno;
        close(fd);
        fail("joining cgroup", strerror(saved));
    }
    close(fd);
}

static void make_and_join_cgroup(const char *parent) {
    char leaf[4096], procs[4200];
    if (snprintf(leaf, sizeof leaf, "%s/sandbox-pid-%d", parent, (int)getpid()) >= (int)sizeof leaf) {
        fail("cgroup path too long", parent);
    }
    if (mkdir(leaf, 0755) != 0 && errno != EEXIST) fail("making cgroup", strerror(errno));
    snprintf(procs, sizeof procs, "%s/cgroup.procs", leaf);
    join_cgroup(procs);
}

/* The arguments in NAME.args when this launcher runs as a copy named NAME, else NULL. */
static char **arguments_file(int argc, char **argv, int *count) {
    static char exe[4096], path[4200];
    static char *items[MAX_ITEMS * 4];
    ssize_t length = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (length <= 0) return NULL;
    exe[length] = '\0';
    const char *name = strrchr(exe, '/');
    if (strcmp(name ? name + 1 : exe, "conduit-confine") == 0) return NULL;
    snprintf(path, sizeof path, "%s.args", exe);
    FILE *file = fopen(path, "re");
    if (file == NULL) return NULL;
    int n = 0;
    items[n++] = argv[0];
    char *line = NULL;
    size_t size = 0;
    ssize_t read;
    while ((read = getline(&line, &size, file)) >= 0) {
        if (read > 0 && line[read - 1] == '\n') line[read - 1] = '\0';
        if (n >= MAX_ITEMS * 4 - argc) fail("too many arguments in", path);
        items[n++] = strdup(line);
    }
    fclose(file);
    for (int k = 1; k < argc; k++) items[n++] = argv[k];
    items[n] = NULL;
    *count = n;
    return items;
}

static void no_new_privileges(void) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("prctl(NO_NEW_PRIVS)", strerror(errno));
}

static uint64_t handled_rights(long abi) {
    uint64_t rights = FS_ABI1;
    if (abi >= 2) rights |= FS_REFER;
    if (abi >= 3) rights |= FS_TRUNCATE;
    if (abi >= 5) rights |= FS_IOCTL_DEV;
    return rights;
}

static void add_rule(int ruleset, const char *path, uint64_t rights) {
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return; /* a path this machine does not have grants nothing */
        fail("landlock: cannot open", path);
    }
    struct stat info;
    if (fstat(fd, &info) != 0) fail("landlock: cannot stat", path);
    if (!S_ISDIR(info.st_mode)) rights &= FILE_RIGHTS;
    struct path_beneath_attr rule = {.allowed_access = rights, .parent_fd = fd};
    if (syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0) != 0) {
        fail("landlock_add_rule", path);
    }
    close(fd);
}

static void restrict_file_system(char **read_only, int n_read_only, char **read_write, int n_read_write) {
    long abi = syscall(SYS_LANDLOCK_CREATE_RULESET, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi < 1) fail("Landlock is not available", NULL);
    uint64_t handled = handled_rights(abi);
    struct ruleset_attr attr = {.handled_access_fs = handled};
    int ruleset = (int)syscall(SYS_LANDLOCK_CREATE_RULESET, &attr, sizeof attr, 0);
    if (ruleset < 0) fail("landlock_create_ruleset", strerror(errno));
    for (int i = 0; i < n_read_only; i++) add_rule(ruleset, read_only[i], READ_ONLY & handled);
    for (int i = 0; i < n_read_write; i++) add_rule(ruleset, read_write[i], READ_WRITE & handled);
    no_new_privileges(); /* landlock_restrict_self requires it of an unprivileged caller */
    if (syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0) fail("landlock_restrict_self", strerror(errno));
    close(ruleset);
}

int main(int argc, char **argv) {
    char *cgroups[MAX_ITEMS], *new_cgroups[MAX_ITEMS], *read_only[MAX_ITEMS], *read_write[MAX_ITEMS];
    char *env[MAX_ITEMS + 1];
    int n_cgroups = 0, n_new_cgroups = 0, n_read_only = 0, n_read_write = 0, n_env = 0;
    long cpu_seconds = 0, niceness = 0, uid = -1, gid = -1;
    int nnp = 0, landlock = 0, clear_env = 0, parent_death = 0, i = 1;
    pid_t parent = getppid();

    if (argc == 2 && strcmp(argv[1], "--protocol") == 0) {
        puts(PROTOCOL);
        return 0;
    }
    int file_count = 0;
    char **from_file = arguments_file(argc, argv, &file_count);
    if (from_file != NULL) {
        argc = file_count;
        argv = from_file;
    }
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *option = argv[i];
        int has_value = i + 1 < argc;
#define TAKE(list, count)                                          \
    do {                                                           \
        if (!has_value || (count) >= MAX_ITEMS) fail("bad option", option); \
        (list)[(count)++] = argv[++i];                             \
    } while (0)
        if (strcmp(option, "--cgroup") == 0) TAKE(cgroups, n_cgroups);
        else if (strcmp(option, "--cgroup-new") == 0) TAKE(new_cgroups, n_new_cgroups);
        else if (strcmp(option, "--ro") == 0) TAKE(read_only, n_read_only);
        else if (strcmp(option, "--rw") == 0) TAKE(read_write, n_read_write);
        else if (strcmp(option, "--env") == 0) TAKE(env, n_env);
        else if (strcmp(option, "--cpu") == 0 && has_value) cpu_seconds = parse_number(argv[++i], option);
        else if (strcmp(option, "--nice") == 0 && has_value) niceness = parse_number(argv[++i], option);
        else if (strcmp(option, "--uid") == 0 && has_value) uid = parse_number(argv[++i], option);
        else if (strcmp(option, "--gid") == 0 && has_value) gid = parse_number(argv[++i], option);
        else if (strcmp(option, "--nnp") == 0) nnp = 1;
        else if (strcmp(option, "--landlock") == 0) landlock = 1;
        else if (strcmp(option, "--clear-env") == 0) clear_env = 1;
        else if (strcmp(option, "--parent-death") == 0) parent_death = 1;
        else fail("unknown option", option);
#undef TAKE
    }
    if (i + 1 >= argc) fail("usage: conduit-confine [options] -- ARGV...", NULL);
    char **target = &argv[i + 1];
    env[n_env] = NULL;

    for (int k = 0; k < n_cgroups; k++) join_cgroup(cgroups[k]);
    for (int k = 0; k < n_new_cgroups; k++) make_and_join_cgroup(new_cgroups[k]);
    if (cpu_seconds > 0) {
        struct rlimit limit = {.rlim_cur = (rlim_t)cpu_seconds, .rlim_max = (rlim_t)cpu_seconds + 1};
        if (setrlimit(RLIMIT_CPU, &limit) != 0) fail("setrlimit(RLIMIT_CPU)", strerror(errno));
    }
    if (niceness != 0) {
        errno = 0;
        if (nice((int)niceness) == -1 && errno != 0) fail("nice", strerror(errno));
    }
    if (nnp) no_new_privileges();
    if (landlock) restrict_file_system(read_only, n_read_only, read_write, n_read_write);
    if (uid >= 0) {
        if (gid < 0) gid = uid;
        if (setgroups(0, NULL) != 0) fail("setgroups", strerror(errno));
        if (setgid((gid_t)gid) != 0) fail("setgid", strerror(errno));
        if (setuid((uid_t)uid) != 0) fail("setuid", strerror(errno));
    }
    if (parent_death) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail("prctl(PDEATHSIG)", strerror(errno));
        if (getppid() != parent) fail("parent death", "the parent exited during the launch");
    }
    extern char **environ;
    execve(target[0], target, clear_env ? env : environ);
    fail("execve", strerror(errno));
    return LAUNCH_FAILED;
}
