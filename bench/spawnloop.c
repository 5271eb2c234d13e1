/* The physical limit of a fork-per-request gateway on this machine: N threads,
 * each in a loop of pipe + posix_spawnp(CMD) + write a body + read the output +
 * waitpid, for a number of seconds. Prints the completed runs per second.
 *
 *   cc -O2 -pthread -o spawnloop spawnloop.c && ./spawnloop 4 10 cat
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static double seconds;
static char **command;
static char body[100];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *loop(void *arg) {
    long *done = arg;
    double end = now() + seconds;
    char out[65536];
    while (now() < end) {
        int in[2], outp[2];
        if (pipe2(in, O_CLOEXEC) || pipe2(outp, O_CLOEXEC)) { perror("pipe"); exit(1); }
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
        pid_t pid;
        int err = posix_spawnp(&pid, command[0], &fa, NULL, command, environ);
        posix_spawn_file_actions_destroy(&fa);
        close(in[0]);
        close(outp[1]);
        if (err) { fprintf(stderr, "spawn: %s\n", strerror(err)); exit(1); }
        if (write(in[1], body, sizeof body) < 0) { perror("write"); exit(1); }
        close(in[1]);
        while (read(outp[0], out, sizeof out) > 0) {}
        close(outp[0]);
        waitpid(pid, NULL, 0);
        (*done)++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s THREADS SECONDS CMD [ARGS...]\n", argv[0]); return 2; }
    int threads = atoi(argv[1]);
    seconds = atof(argv[2]);
    command = argv + 3;
    memset(body, 'x', sizeof body);
    pthread_t tid[64];
    long done[64] = {0};
    double start = now();
    for (int i = 0; i < threads && i < 64; i++) pthread_create(&tid[i], NULL, loop, &done[i]);
    long total = 0;
    for (int i = 0; i < threads && i < 64; i++) { pthread_join(tid[i], NULL); total += done[i]; }
    printf("%.1f\n", total / (now() - start));
    return 0;
}
