/* The load generator of tests/test_hostile_input.py: real processes at a chosen rate, fast
 * enough that the agent, not the generator, is what a storm measures.
 *
 *   hostile_spawner exec RATE LIST   runs `EXE ARG` for each pair of LIST (EXE NUL ARG NUL,
 *                                    ...), RATE per second (0: as fast as it can)
 *   hostile_spawner fork RATE SECONDS  forks children that exit at once, RATE per second
 *                                    (0: as fast as it can) for SECONDS
 *   hostile_spawner connect RATE COUNT
 *                                    COUNT TCP connections to a listener of its own on
 *                                    127.0.0.1 (a port the kernel picks, in the JSON as
 *                                    "port"), RATE per second: connect, accept, close; the
 *                                    client closes with SO_LINGER 0 (a reset), so that no
 *                                    TIME_WAIT piles up at 1,600/s
 *   hostile_spawner argv COUNT SIZE EXE TAG
 *                                    execs EXE with TAG and COUNT-1 more arguments of SIZE
 *                                    bytes each ("<index>:xxx..."), the stack rlimit raised
 *                                    so that the kernel accepts them
 *
 * Each mode prints one line of JSON on stdout: what it started and how fast. Children are
 * made with vfork + execve (exec) or fork + _exit (fork) and reaped as they end; at most
 * MAX_IN_FLIGHT are alive at once so that a storm cannot exhaust the pid space.
 *
 * Built with -DHOSTILE_TRUE, the same file is the smallest program to exec: it exits 0 at
 * once (static, no dynamic loader), so that an exec storm costs the kernel's exec and not
 * ld.so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef HOSTILE_TRUE
/* With HOSTILE_LINGER set it stays 0.3 s, so that the proc connector's reader finds it in
 * /proc (argv, exe, cwd); without, it is the shortest-lived program there is. */
int main(void) {
    if (getenv("HOSTILE_LINGER") != NULL) {
        struct timespec ts = {0, 300000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}
#else

enum { MAX_IN_FLIGHT = 256 };

extern char **environ;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reaps ended children; with `block`, waits for one. Returns how many were reaped, and
 * counts those that did not exit 0 in *failed. */
static long reap(int block, long *failed) {
    long n = 0;
    for (;;) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, (block && n == 0) ? 0 : WNOHANG);
        if (pid <= 0) return n;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) (*failed)++;
        n++;
    }
}

/* Sleeps until `start + done / rate` (rate 0: never). */
static void pace(double start, long done, double rate) {
    if (rate <= 0) return;
    double wait = start + (double)done / rate - now_s();
    if (wait > 0) {
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static int run_exec(double rate, const char *list_path) {
    int fd = open(list_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { perror("open"); return 2; }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0) { fprintf(stderr, "empty list\n"); close(fd); return 2; }
    size_t size = (size_t)st.st_size;
    char *text = mmap(NULL, size + 1, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (text == MAP_FAILED) { perror("mmap"); return 2; }
    long started = 0, failed = 0, spawn_errors = 0, alive = 0;
    double start = now_s();
    size_t pos = 0;
    while (pos < size) {
        const char *exe = text + pos;
        size_t exe_len = strnlen(exe, size - pos);
        if (pos + exe_len + 1 >= size) break;
        const char *arg = exe + exe_len + 1;
        size_t arg_len = strnlen(arg, size - pos - exe_len - 1);
        if (pos + exe_len + 1 + arg_len >= size) break;  /* the list must end with NUL */
        pos += exe_len + 1 + arg_len + 1;
        pace(start, started, rate);
        while (alive >= MAX_IN_FLIGHT) alive -= reap(1, &failed);
        char *argv[] = {(char *)exe, (char *)arg, NULL};
        pid_t pid = vfork();
        if (pid == 0) {
            execve(exe, argv, environ);
            _exit(127);
        }
        if (pid < 0) { spawn_errors++; continue; }
        started++;
        alive++;
        alive -= reap(0, &failed);
    }
    while (alive > 0) alive -= reap(1, &failed);
    double elapsed = now_s() - start;
    printf("{\"started\": %ld, \"failed\": %ld, \"spawn_errors\": %ld, \"seconds\": %.3f, \"rate\": %.1f}\n",
           started, failed, spawn_errors, elapsed, elapsed > 0 ? (double)started / elapsed : 0.0);
    return failed || spawn_errors ? 1 : 0;
}

static int run_fork(double rate, double seconds) {
    long started = 0, failed = 0, spawn_errors = 0, alive = 0;
    double start = now_s();
    while (now_s() - start < seconds) {
        pace(start, started, rate);
        while (alive >= MAX_IN_FLIGHT) alive -= reap(1, &failed);
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid < 0) { spawn_errors++; alive -= reap(1, &failed); continue; }
        started++;
        alive++;
        alive -= reap(0, &failed);
    }
    while (alive > 0) alive -= reap(1, &failed);
    double elapsed = now_s() - start;
    printf("{\"started\": %ld, \"failed\": %ld, \"spawn_errors\": %ld, \"seconds\": %.3f, \"rate\": %.1f}\n",
           started, failed, spawn_errors, elapsed, elapsed > 0 ? (double)started / elapsed : 0.0);
    return failed ? 1 : 0;
}

/* One process is both ends, so that the load is exactly one connect and one accept per
 * connection and nothing else: no fork, no exec. */
static int run_connect(double rate, long count) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0) { perror("socket"); return 2; }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t addr_len = sizeof addr;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 128) != 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &addr_len) != 0) {
        perror("listener");
        close(listener);
        return 2;
    }
    const struct linger reset = {1, 0};
    long started = 0, failed = 0;
    double start = now_s();
    for (long i = 0; i < count; i++) {
        pace(start, i, rate);
        int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (client < 0) { failed++; continue; }
        setsockopt(client, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
        /* On loopback the handshake completes inside connect: the connection is queued on
         * the listener when it returns. */
        if (connect(client, (struct sockaddr *)&addr, sizeof addr) != 0) {
            failed++;
            close(client);
            continue;
        }
        int server = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        close(client);
        if (server < 0) { failed++; continue; }
        close(server);
        started++;
    }
    double elapsed = now_s() - start;
    close(listener);
    printf("{\"started\": %ld, \"failed\": %ld, \"port\": %u, \"seconds\": %.3f, \"rate\": %.1f}\n",
           started, failed, (unsigned)ntohs(addr.sin_port), elapsed,
           elapsed > 0 ? (double)started / elapsed : 0.0);
    return failed ? 1 : 0;
}

static int run_argv(long count, long size, const char *exe, const char *tag) {
    if (count < 2 || size < 2 || size > 128 * 1024) { fprintf(stderr, "bad argv shape\n"); return 2; }
    /* ARG_MAX is a quarter of the stack rlimit: make room for the arguments and their
     * pointers, twice over. */
    struct rlimit rl;
    rlim_t need = (rlim_t)(count * (size + 1 + (long)sizeof(char *))) * 8;
    if (getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rl.rlim_cur = need;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) rl.rlim_max = need;
        if (setrlimit(RLIMIT_STACK, &rl) != 0) { perror("setrlimit"); return 2; }
    }
    char **argv = calloc((size_t)count + 1, sizeof(char *));
    char *buf = malloc((size_t)(count - 2) * (size_t)size + 1);
    if (argv == NULL || buf == NULL) { fprintf(stderr, "out of memory\n"); return 2; }
    argv[0] = (char *)exe;
    argv[1] = (char *)tag;
    for (long i = 2; i < count; i++) {
        char *a = buf + (size_t)(i - 2) * (size_t)size;
        memset(a, 'x', (size_t)size - 1);
        a[size - 1] = '\0';
        int n = snprintf(a, (size_t)size, "%ld:", i);
        if (n > 0 && n < size) a[n] = 'x';  /* snprintf's NUL back to the filler */
        argv[i] = a;
    }
    pid_t pid = fork();
    if (pid == 0) {
        execve(exe, argv, environ);
        fprintf(stderr, "execve: %s\n", strerror(errno));
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) { perror("fork"); return 2; }
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    printf("{\"started\": 1, \"failed\": %d, \"args\": %ld, \"arg_bytes\": %ld}\n", ok ? 0 : 1, count,
           (long)strlen(exe) + 1 + (long)strlen(tag) + 1 + (count - 2) * size);
    free(buf);
    free(argv);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "exec") == 0) return run_exec(atof(argv[2]), argv[3]);
    if (argc == 4 && strcmp(argv[1], "fork") == 0) return run_fork(atof(argv[2]), atof(argv[3]));
    if (argc == 4 && strcmp(argv[1], "connect") == 0) return run_connect(atof(argv[2]), atol(argv[3]));
    if (argc == 6 && strcmp(argv[1], "argv") == 0)
        return run_argv(atol(argv[2]), atol(argv[3]), argv[4], argv[5]);
    fprintf(stderr, "usage: hostile_spawner exec RATE LIST | fork RATE SECONDS | connect RATE COUNT | "
                    "argv COUNT SIZE EXE TAG\n");
    return 2;
}
#endif
