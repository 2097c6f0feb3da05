/* A syscall-heavy target for bench/overhead.py.
 *
 * usage: bench_syscalls HOOK_COMMAND NAME ITERATIONS
 *   runs "HOOK_COMMAND NAME PID" through system() as Postfix's debug_process()
 *   does (HOOK_COMMAND "-" skips it: untraced), then makes ITERATIONS
 *   getppid() system calls (through syscall(2): nothing cached in libc) and
 *   prints "hook=S elapsed_us=N" with the time the loop took.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char command[8192];
    struct timespec start, end;
    int status = 0;
    long iterations, i;
    volatile long sink = 0;

    if (argc != 4) {
        fprintf(stderr, "usage: bench_syscalls HOOK_COMMAND NAME ITERATIONS\n");
        return 2;
    }
    iterations = atol(argv[3]);
    if (strcmp(argv[1], "-") != 0) {
        snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
        status = system(command);
        status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (i = 0; i < iterations; i++)
        sink += syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &end);
    printf("hook=%d elapsed_us=%ld\n", status,
           (long) ((end.tv_sec - start.tv_sec) * 1000000L + (end.tv_nsec - start.tv_nsec) / 1000));
    fflush(stdout);
    return 0;
}
