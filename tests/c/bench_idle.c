/* An idle traced daemon for bench/watch_scale.py.
 *
 * usage: bench_idle HOOK_COMMAND NAME
 *   runs "HOOK_COMMAND NAME PID" through system() as Postfix's debug_process()
 *   does (HOOK_COMMAND "-" skips it), prints "elapsed_us=N status=S" (the time
 *   spent in system() and the command's exit status), then blocks in pause()
 *   until a signal kills it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char command[8192];
    struct timespec start, end;
    int status = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: bench_idle HOOK_COMMAND NAME\n");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (strcmp(argv[1], "-") != 0) {
        snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
        status = system(command);
        status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    printf("elapsed_us=%ld status=%d\n",
           (long) ((end.tv_sec - start.tv_sec) * 1000000L + (end.tv_nsec - start.tv_nsec) / 1000), status);
    fflush(stdout);
    for (;;)
        pause();
}
